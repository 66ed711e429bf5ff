import cluster from 'node:cluster';
import http, { IncomingMessage, ServerResponse } from 'node:http';
import os from 'node:os';

import { checkPostgres, closePostgres } from '../database';
import { BrokerUnavailable, checkRabbitMQ, closeRabbitMQ } from '../rabbitmq';
import { checkRedis, closeRedis } from '../redis';
import { appRoot, intSetting, loadEnvFile } from '../utils/env';
import { Check, DependencyStatus, probe } from '../utils/health';
import { errorText, log, setLogService } from '../utils/log';
import { releaseVersion } from '../utils/release';
import { TimeoutError, withTimeout } from '../utils/time';
import { HttpError, RequestContext, Router, sendJson } from './http';

/** The shared connections a service can declare as dependencies. */
export const DEPENDENCIES: Record<string, Check> = {
  postgres: checkPostgres,
  redis: checkRedis,
  rabbitmq: checkRabbitMQ,
};

export interface ServiceOptions {
  name: string;
  /** Used when PORT is not set; PM2 sets PORT from the ecosystem. */
  defaultPort: number;
  /** The service's package directory (the parent of dist/). */
  serviceDir: string;
  router: Router;
  /** Keys of DEPENDENCIES that /health probes. */
  dependencies: Array<keyof typeof DEPENDENCIES>;
  /** Extra /health fields; ok false turns /health into a 503. */
  health?: () => { ok: boolean; details: Record<string, unknown> };
  /** Called for requests no route matches (the gateway's proxy). */
  fallback?: (ctx: RequestContext) => void | Promise<void>;
  /** Runs once listening; must not block on a dependency being up. */
  start?: () => void | Promise<void>;
  /** Runs after the last request finished, before connections close. */
  stop?: () => Promise<void>;
}

export interface RunningService {
  server: http.Server;
  version: string;
  shutdown: (reason: string) => Promise<void>;
}

// Codes that mean "a dependency is not there", answered 503, not 500.
const UNAVAILABLE = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH',
  'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', '57P01', '57P03', '53300',
]);

function isUnavailable(err: unknown): boolean {
  if (err instanceof BrokerUnavailable || err instanceof TimeoutError) {
    return true;
  }
  const code = (err as { code?: string } | null)?.code;
  const message = err instanceof Error ? err.message : '';
  return (code !== undefined && UNAVAILABLE.has(code)) ||
    /timeout|Connection terminated|not connected|Connection is closed/i.test(message);
}

/**
 * Hand back every connection the cluster master is still sending us.
 *
 * Under PM2's cluster mode the master accepts each connection and passes it to
 * an instance over IPC. One it passed just before it heard that this instance
 * closed its server is still on its way; this instance refuses it on arrival
 * and the master gives it to another. An instance that exits sooner strands it,
 * and its client waits for an answer that never comes. Disconnecting from the
 * cluster waits for the master's answer to a last message, and the master's
 * messages arrive in order, so once it resolves no connection is in flight.
 */
export function leaveCluster(): Promise<void> {
  const worker = cluster.isWorker ? cluster.worker : undefined;
  if (worker === undefined || !process.connected) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    process.once('disconnect', () => resolve());
    worker.disconnect();
  });
}

/**
 * Start a service: load the shared .env, listen on PORT, answer /health,
 * tell PM2 'ready' once listening, and stop gracefully on SIGINT/SIGTERM.
 */
export function runService(options: ServiceOptions): RunningService {
  process.env.PSA_SERVICE = options.name;
  setLogService(options.name);
  const env = loadEnvFile();
  const version = releaseVersion(options.serviceDir);
  const port = intSetting('PORT', options.defaultPort);
  const healthTimeout = intSetting('HEALTH_TIMEOUT_MS', 1000);
  const keepAlive = intSetting('HTTP_KEEPALIVE_TIMEOUT_MS', 5000);
  const drainTimeout = intSetting('SHUTDOWN_TIMEOUT_MS', 7000);
  const probes = Object.fromEntries(options.dependencies.map((name) => [name, probe(DEPENDENCIES[name])]));
  const started = Date.now();
  const active = new Set<ServerResponse>();
  let stopping = false;

  log.info('starting', {
    version, port, appRoot: appRoot(), envFile: env.file,
    envLoaded: env.loaded.length, envSkipped: env.skipped, node: process.version,
  });

  async function health(res: ServerResponse): Promise<void> {
    const names = Object.keys(probes);
    const results = await Promise.all(names.map((name) => probes[name](healthTimeout)));
    const dependencies: Record<string, DependencyStatus> = {};
    names.forEach((name, i) => {
      dependencies[name] = results[i];
    });
    const extra = options.health?.() ?? { ok: true, details: {} };
    const ok = extra.ok && results.every((r) => r.status === 'ok');
    const status = !ok ? 'degraded' : stopping ? 'stopping' : 'ok';
    // A stopping instance still answers the requests it was handed (PM2's
    // cluster stops routing to it), so stopping alone is no failure: 200,
    // with the status saying so.
    sendJson(res, ok ? 200 : 503, {
      service: options.name,
      status,
      version,
      host: os.hostname(),
      pid: process.pid,
      uptime_s: Math.round((Date.now() - started) / 1000),
      dependencies,
      ...extra.details,
    });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const begun = Date.now();
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      sendJson(res, 400, { error: 'bad_request', message: 'invalid request target' });
      return;
    }
    if (url.pathname !== '/health') {
      res.on('finish', () => log.info('request', {
        method: req.method, path: url.pathname, status: res.statusCode, ms: Date.now() - begun,
      }));
    }
    try {
      if (url.pathname === '/health' && (req.method === 'GET' || req.method === 'HEAD')) {
        await health(res);
        return;
      }
      const found = options.router.match(req.method ?? 'GET', url.pathname);
      const ctx: RequestContext = { req, res, url, params: {} };
      if (typeof found === 'object') {
        ctx.params = found.params;
        const body = await found.handler(ctx);
        if (!res.headersSent) {
          sendJson(res, 200, body ?? {});
        }
      } else if (options.fallback) {
        await options.fallback(ctx);
      } else if (found === 405) {
        sendJson(res, 405, { error: 'method_not_allowed', service: options.name });
      } else {
        sendJson(res, 404, { error: 'not_found', service: options.name, path: url.pathname });
      }
    } catch (err) {
      if (res.headersSent) {
        log.error('request failed after the response started', { path: url.pathname, error: errorText(err) });
        res.destroy();
      } else if (err instanceof HttpError) {
        sendJson(res, err.status, { error: err.code, message: err.message, service: options.name });
      } else if (isUnavailable(err)) {
        log.warn('dependency unavailable', { path: url.pathname, error: errorText(err) });
        sendJson(res, 503, { error: 'dependency_unavailable', message: errorText(err), service: options.name });
      } else {
        log.error('request failed', { path: url.pathname, error: errorText(err), stack: (err as Error)?.stack });
        sendJson(res, 500, { error: 'internal_error', service: options.name });
      }
    }
  }

  const server = http.createServer();
  // Idle keep-alive sockets close after keepAlive ms; a client (the gateway's
  // agent) must drop idle sockets sooner, or it may send on a closing one.
  server.keepAliveTimeout = keepAlive;
  server.headersTimeout = keepAlive + 1000;

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    active.add(res);
    if (stopping) {
      // A request that arrived on a kept-alive socket after the signal is
      // served, and its socket closed after the response.
      res.setHeader('connection', 'close');
    }
    res.on('close', () => {
      active.delete(res);
      if (stopping) {
        setImmediate(() => server.closeIdleConnections());
      }
    });
    void handle(req, res);
  });

  server.on('error', (err) => {
    log.error('server error', { error: errorText(err), port });
    process.exit(1);
  });

  // Connect to the dependencies (and start consumers) before taking traffic:
  // on a reload PM2 stops the old instance as soon as this one says ready, so
  // a new instance must not answer 'degraded' while its connections open.
  // Bounded well inside PM2's listen_timeout; if a dependency stays down the
  // instance starts anyway and its /health says so.
  async function warmUp(): Promise<void> {
    const wait = intSetting('WARMUP_TIMEOUT_MS', 6000);
    const deadline = Date.now() + wait;
    while (wait > 0 && Date.now() < deadline) {
      const results = await Promise.all(Object.values(probes).map((p) => p(healthTimeout)));
      if (results.every((r) => r.status === 'ok')) {
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    await withTimeout(Promise.resolve(options.start?.()), Math.max(deadline - Date.now(), 500),
      'service start').catch((err) => log.error('start failed', { error: errorText(err) }));
  }

  void warmUp().finally(() => {
    if (stopping) {
      return;
    }
    server.listen(port, () => {
      log.info('listening', { port });
      // PM2 (wait_ready) counts this instance as up, and on a reload only then
      // stops the old one.
      if (typeof process.send === 'function') {
        process.send('ready');
      }
    });
  });

  async function shutdown(reason: string): Promise<void> {
    if (stopping) {
      log.warn('already stopping', { reason });
      return;
    }
    stopping = true;
    log.info('stopping', { reason, inFlight: active.size });

    // No new connections; idle keep-alive sockets close now, busy ones once
    // their response is written (Connection: close).
    const drained = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    for (const res of active) {
      if (!res.headersSent) {
        res.setHeader('connection', 'close');
      }
    }
    try {
      await withTimeout(drained, drainTimeout, 'in-flight requests');
    } catch (err) {
      log.warn('closing connections with requests still running', { error: errorText(err), inFlight: active.size });
      server.closeAllConnections();
    }

    await withTimeout(leaveCluster(), 2000, 'leaving the PM2 cluster').catch((err) =>
      log.warn('left the cluster without its answer', { error: errorText(err) }));

    try {
      await withTimeout(Promise.resolve(options.stop?.()), 2000, 'service stop');
    } catch (err) {
      log.warn('service stop failed', { error: errorText(err) });
    }
    const closing = Promise.allSettled([closeRabbitMQ(), closeRedis(), closePostgres()]);
    await withTimeout(closing, 2000, 'closing connections').catch((err) =>
      log.warn('connections not closed cleanly', { error: errorText(err) }));
    log.info('stopped', { reason });
    process.exit(0);
  }

  // PM2 stops and reloads with SIGINT, systemd and docker with SIGTERM.
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));

  return { server, version, shutdown };
}
