import fs from 'node:fs';
import path from 'node:path';

import { appRoot } from '@psa/shared';

export interface Upstream {
  host: string;
  port: number;
}

export type UpstreamMap = Map<string, Upstream>;

export interface Route {
  service: string;
  /** Path and query to request from the upstream. */
  path: string;
}

const PREFIX = '/api/v1/';
const SERVICE_NAME = /^[a-z0-9][a-z0-9-]*$/;

/**
 * Map a request target to a service and the path to ask it for:
 * /api/v1/<service>/health goes to the service's own /health, any other
 * /api/v1/<service>[/...] is passed on unchanged. Null when the target is
 * not under /api/v1/<service>.
 */
export function routeRequest(target: string): Route | null {
  const q = target.indexOf('?');
  const pathname = q === -1 ? target : target.slice(0, q);
  const search = q === -1 ? '' : target.slice(q);
  if (!pathname.startsWith(PREFIX)) {
    return null;
  }
  const rest = pathname.slice(PREFIX.length);
  const slash = rest.indexOf('/');
  const service = slash === -1 ? rest : rest.slice(0, slash);
  if (!SERVICE_NAME.test(service)) {
    return null;
  }
  const remainder = slash === -1 ? '' : rest.slice(slash);
  if (remainder === '/health' || remainder === '/health/') {
    return { service, path: '/health' + search };
  }
  return { service, path: pathname + search };
}

export class UpstreamsError extends Error {}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UpstreamsError(`${file}: not valid JSON (${(err as Error).message})`);
  }
}

function checkUpstream(value: unknown, where: string): Upstream {
  const { host, port } = (value ?? {}) as { host?: unknown; port?: unknown };
  if (typeof host !== 'string' || host === '') {
    throw new UpstreamsError(`${where}.host must be a non-empty string`);
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UpstreamsError(`${where}.port must be an integer from 1 to 65535`);
  }
  return { host, port };
}

/**
 * The gateway a forwarding stage passes every request to, unchanged: set
 * in upstreams.json as "forward": {host, port} once the gateway has moved
 * to its own container and this one only keeps its old address answering.
 */
export function parseForward(text: string, file = 'upstreams.json'): Upstream | undefined {
  const forward = (parseJson(text, file) as { forward?: unknown } | null)?.forward;
  return forward === undefined ? undefined : checkUpstream(forward, `${file}: forward`);
}

/** Parse config/upstreams.json: {"services": {name: {host, port}}}. */
export function parseUpstreams(text: string, file = 'upstreams.json'): UpstreamMap {
  const doc = parseJson(text, file);
  const services = (doc as { services?: unknown } | null)?.services;
  if (typeof services !== 'object' || services === null || Array.isArray(services)) {
    throw new UpstreamsError(`${file}: expected an object under "services"`);
  }
  const map: UpstreamMap = new Map();
  for (const [name, value] of Object.entries(services)) {
    if (!SERVICE_NAME.test(name)) {
      throw new UpstreamsError(`${file}: service name ${JSON.stringify(name)} is not lower-case letters, digits and '-'`);
    }
    map.set(name, checkUpstream(value, `${file}: services.${name}`));
  }
  return map;
}

/** The upstream map's file: UPSTREAMS_FILE, else <app root>/config/upstreams.json. */
export function upstreamsPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.UPSTREAMS_FILE || path.join(appRoot(env), 'config', 'upstreams.json');
}

export function loadUpstreams(file: string): { services: UpstreamMap; forward?: Upstream } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UpstreamsError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  return { services: parseUpstreams(text, file), forward: parseForward(text, file) };
}

// Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not the message.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization',
  'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

/** Copy headers minus hop-by-hop ones, including those Connection names. */
export function endToEndHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name) && !named.includes(name)) {
      out[name] = value;
    }
  }
  return out;
}
