import { randomUUID } from 'node:crypto';
import http, { IncomingMessage, ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream';

import {
  Router, RequestContext, errorText, intSetting, loadEnvFile, log, runService, sendJson,
} from '@psa/shared';

import {
  Route, Upstream, UpstreamMap, endToEndHeaders, loadUpstreams, routeRequest, upstreamsPath,
} from './routing';

const NAME = 'api-gateway';

// The settings below are read before runService; under PM2 they are in the
// environment already, by hand they may only be in the .env file.
loadEnvFile();

const file = upstreamsPath();
let upstreams: UpstreamMap = new Map();
// Set when this gateway is a forwarding stage on an old address.
let forward: Upstream | undefined;
let loadedAt: string | undefined;
let loadError: string | undefined;

/** Read the upstream map; on failure keep the one in use and report why. */
function reloadUpstreams(reason: string): void {
  try {
    ({ services: upstreams, forward } = loadUpstreams(file));
    loadedAt = new Date().toISOString();
    loadError = undefined;
    log.info('upstream map loaded', { reason, file, services: [...upstreams.keys()], forward });
  } catch (err) {
    loadError = errorText(err);
    log.error('upstream map not loaded', { reason, error: loadError });
  }
}

const proxyTimeout = intSetting('PROXY_TIMEOUT_MS', 30000);
// A safe request with no body that has no answer this soon is tried once more
// on a new connection: during a reload a connection can reach an instance
// that is stopping and never answer it.
const retryAfter = intSetting('PROXY_RETRY_AFTER_MS', 3000);
// Shorter than the services' keep-alive timeout (5 s), so the gateway drops
// an idle socket before the service closes it under a request.
const agent = new http.Agent({
  keepAlive: true,
  maxSockets: intSetting('PROXY_MAX_SOCKETS', 256),
  timeout: intSetting('UPSTREAM_IDLE_TIMEOUT_MS', 4000),
});

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);
// Every answer names the gateway that routed it, so an operator (and
// psa-infra's migration checks) can tell which one clients reach.
const GATEWAY_HEADER = 'x-psa-gateway';
const hostname = os.hostname();

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function forwardedFor(req: IncomingMessage): string {
  const prior = req.headers['x-forwarded-for'];
  // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
  const peer = (req.socket.remoteAddress ?? '').replace(/^::ffff:(?=\d+\.)/, '');
  return prior ? `${prior}, ${peer}` : peer;
}

/** Stream one request to its upstream and the answer back. */
function proxy(req: IncomingMessage, res: ServerResponse, route: Route, upstream: Upstream, attempt = 0): void {
  const headers = endToEndHeaders(req.headers);
  headers['x-forwarded-for'] = forwardedFor(req);
  headers['x-forwarded-host'] = req.headers.host ?? '';
  headers['x-forwarded-proto'] = 'http';
  headers['x-request-id'] = (req.headers['x-request-id'] as string | undefined) ?? randomUUID();
  req.headers['x-request-id'] = headers['x-request-id'];
  headers.host = `${upstream.host}:${upstream.port}`;
  const retriable = attempt === 0 && SAFE.has(req.method ?? '') && !hasBody(req);
  const waitFor = retriable ? retryAfter : proxyTimeout;

  const outgoing = http.request({
    host: upstream.host,
    port: upstream.port,
    method: req.method,
    path: route.path,
    headers,
    // The retry takes a new connection: other pooled ones may lead to the
    // same stopping instance.
    agent: attempt === 0 ? agent : false,
    timeout: waitFor,
  });

  outgoing.on('response', (incoming) => {
    outgoing.setTimeout(proxyTimeout);
    const answer = endToEndHeaders(incoming.headers);
    // A forwarding stage passes on the header of the gateway behind it.
    if (answer[GATEWAY_HEADER] === undefined) {
      answer[GATEWAY_HEADER] = hostname;
    }
    res.writeHead(incoming.statusCode ?? 502, answer);
    pipeline(incoming, res, (err) => {
      if (err) {
        outgoing.destroy();
      }
    });
  });

  outgoing.on('timeout', () => {
    outgoing.destroy(Object.assign(new Error(`no answer within ${waitFor} ms`), { code: 'ETIMEDOUT' }));
  });

  outgoing.on('error', (err: NodeJS.ErrnoException) => {
    req.unpipe(outgoing);
    // A connection reset or left unanswered before any answer: a kept-alive
    // socket the service closed as it was reused, or a connection handed to an
    // instance that PM2 is stopping. Retried once for safe methods with no
    // body to replay.
    if (!res.headersSent && retriable && (err.code === 'ECONNRESET' || err.code === 'ETIMEDOUT')) {
      proxy(req, res, route, upstream, attempt + 1);
      return;
    }
    if (res.headersSent) {
      res.destroy(err);
      return;
    }
    const status = err.code === 'ETIMEDOUT' ? 504 : 502;
    log.warn('upstream failed', { upstream_service: route.service, upstream: `${upstream.host}:${upstream.port}`, error: errorText(err) });
    sendJson(res, status, {
      error: status === 504 ? 'gateway_timeout' : 'bad_gateway',
      service: route.service,
      upstream: `${upstream.host}:${upstream.port}`,
      message: errorText(err),
    });
  });

  // The client went away before its answer was complete: stop the upstream.
  res.on('close', () => {
    if (!res.writableFinished) {
      outgoing.destroy();
    }
  });
  req.on('error', () => outgoing.destroy());

  if (attempt === 0 && hasBody(req)) {
    req.pipe(outgoing);
  } else {
    outgoing.end();
  }
}

function fallback({ req, res }: RequestContext): void {
  if (forward) {
    proxy(req, res, { service: 'api-gateway', path: req.url ?? '/' }, forward);
    return;
  }
  const route = routeRequest(req.url ?? '/');
  if (!route) {
    sendJson(res, 404, { error: 'not_found', service: NAME, message: 'routes are /api/v1/<service>/...' });
    return;
  }
  const upstream = upstreams.get(route.service);
  if (!upstream) {
    sendJson(res, 404, { error: 'unknown_service', service: route.service, known: [...upstreams.keys()] });
    return;
  }
  proxy(req, res, route, upstream);
}

reloadUpstreams('start');
// SIGHUP re-reads the map without a restart (pm2 sendSignal SIGHUP api-gateway);
// a reload (new processes) reads it anyway.
process.on('SIGHUP', () => reloadUpstreams('SIGHUP'));

runService({
  name: NAME,
  defaultPort: 3000,
  serviceDir: path.resolve(__dirname, '..'),
  router: new Router(),
  dependencies: [],
  fallback,
  health: () => ({
    ok: upstreams.size > 0 || forward !== undefined,
    details: {
      upstreams: {
        file,
        loaded_at: loadedAt,
        error: loadError,
        forward,
        services: Object.fromEntries(upstreams),
      },
    },
  }),
  stop: async () => {
    agent.destroy();
  },
});
