'use strict';
// The gateway against a stand-in service: proxying, 502, the map reloaded on
// SIGHUP, and a graceful stop that finishes an in-flight request.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { test } = require('node:test');

const { freePort, request, startService, tempRoot } = require('./helpers');

function writeMap(root, services) {
  fs.mkdirSync(path.join(root, 'config'), { recursive: true });
  fs.writeFileSync(path.join(root, 'config', 'upstreams.json'), JSON.stringify({ $comment: 'test', services }));
}

/** A stand-in service: /health, a slow path, and an echo of the body. */
async function standIn() {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push({ url: req.url, headers: req.headers });
    if (req.url === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ service: 'slow', status: 'ok' }));
    } else if (req.url.startsWith('/api/v1/slow/wait')) {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ done: true }));
      }, 1000);
    } else if (req.url === '/api/v1/slow/echo') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: server.address().port, seen, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

async function startGateway(t, services) {
  const root = tempRoot();
  writeMap(root, services);
  const port = await freePort();
  const gw = startService('api-gateway', { APP_ROOT: root, PORT: String(port) });
  t.after(() => gw.child.kill('SIGKILL'));
  await gw.ready;
  return { ...gw, port, root };
}

test('proxies, maps health, streams bodies and answers 502 for a dead upstream', async (t) => {
  const up = await standIn();
  t.after(() => up.close());
  const dead = await freePort();
  const gw = await startGateway(t, { slow: { host: '127.0.0.1', port: up.port }, dead: { host: '127.0.0.1', port: dead } });

  const health = await request(gw.port, { path: '/api/v1/slow/health' });
  assert.equal(health.status, 200);
  assert.deepEqual(health.json, { service: 'slow', status: 'ok' });
  assert.equal(up.seen.at(-1).url, '/health');
  assert.ok(up.seen.at(-1).headers['x-request-id']);
  assert.equal(up.seen.at(-1).headers['x-forwarded-for'], '127.0.0.1');

  const body = Buffer.alloc(2 * 1024 * 1024, 'x');
  const echo = await request(gw.port, {
    method: 'POST', path: '/api/v1/slow/echo', body, headers: { 'transfer-encoding': 'chunked' },
  });
  assert.equal(echo.status, 200);
  assert.equal(echo.text.length, body.length);

  const bad = await request(gw.port, { path: '/api/v1/dead/anything' });
  assert.equal(bad.status, 502);
  assert.equal(bad.json.error, 'bad_gateway');
  assert.equal(bad.json.service, 'dead');
  assert.match(bad.json.message, /ECONNREFUSED/);

  const own = await request(gw.port, { path: '/health' });
  assert.equal(own.status, 200);
  assert.equal(own.json.service, 'api-gateway');
  assert.deepEqual(own.json.upstreams.services.slow, { host: '127.0.0.1', port: up.port });
});

test('SIGHUP re-reads the upstream map without a restart', async (t) => {
  const up = await standIn();
  t.after(() => up.close());
  const gw = await startGateway(t, {});
  const before = await request(gw.port, { path: '/health' });
  assert.equal(before.status, 503, 'an empty map is not healthy');

  writeMap(gw.root, { slow: { host: '127.0.0.1', port: up.port } });
  gw.child.kill('SIGHUP');
  let after;
  for (let i = 0; i < 50; i++) {
    after = await request(gw.port, { path: '/api/v1/slow/health' });
    if (after.status === 200) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(after.status, 200);
  assert.equal((await request(gw.port, { path: '/health' })).json.upstreams.services.slow.port, up.port);

  // A broken map is reported and the one in use kept.
  fs.writeFileSync(path.join(gw.root, 'config', 'upstreams.json'), '{');
  gw.child.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 200));
  const kept = await request(gw.port, { path: '/health' });
  assert.match(kept.json.upstreams.error, /not valid JSON/);
  assert.equal(kept.json.upstreams.services.slow.port, up.port);
  assert.equal(gw.child.exitCode, null, 'SIGHUP must not stop the gateway');
});

test('SIGINT finishes the in-flight request, closes idle keep-alive sockets, then exits 0', async (t) => {
  const up = await standIn();
  t.after(() => up.close());
  const gw = await startGateway(t, { slow: { host: '127.0.0.1', port: up.port } });

  // An idle kept-alive connection, as a browser or load balancer leaves one.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const first = await request(gw.port, { path: '/health', agent });
  const idleClosed = new Promise((resolve) => first.socket.once('close', () => resolve(Date.now())));

  const inFlight = request(gw.port, { path: '/api/v1/slow/wait' });
  await new Promise((r) => setTimeout(r, 200));
  const signalled = Date.now();
  gw.child.kill('SIGINT');

  assert.ok((await idleClosed) - signalled < 500, 'the idle keep-alive socket was not closed promptly');
  await new Promise((r) => setTimeout(r, 100));
  await assert.rejects(request(gw.port, { path: '/health' }), /ECONNREFUSED/, 'new connections must be refused');

  const res = await inFlight;
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { done: true });
  assert.equal(res.headers.connection, 'close');

  const { code } = await gw.exited;
  assert.equal(code, 0, gw.output());
  assert.match(gw.output(), /"msg":"stopped"/);
});

test('a GET left unanswered is tried once more on a new connection', async (t) => {
  // The first connection is accepted and never answered, as by an instance
  // that PM2 is stopping; the second is answered.
  let connections = 0;
  const server = http.createServer((req, res) => {
    if (connections === 1) {
      return; // never answer the first
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ service: 'flaky', status: 'ok' }));
  });
  server.on('connection', () => { connections += 1; });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  const gw = await startGateway(t, { flaky: { host: '127.0.0.1', port: server.address().port } });
  const started = Date.now();
  const res = await request(gw.port, { path: '/api/v1/flaky/health' });
  assert.equal(res.status, 200);
  assert.equal(connections, 2);
  assert.ok(Date.now() - started < 4500, 'retried after about PROXY_RETRY_AFTER_MS');
});

test('a forwarding stage passes every request on unchanged and names the gateway behind it', async (t) => {
  const up = await standIn();
  t.after(() => up.close());
  const behind = await startGateway(t, { slow: { host: '127.0.0.1', port: up.port } });
  const front = await startGateway(t, {});
  fs.writeFileSync(path.join(front.root, 'config', 'upstreams.json'), JSON.stringify({
    services: {}, forward: { host: '127.0.0.1', port: behind.port },
  }));
  front.child.kill('SIGHUP');
  let res;
  for (let i = 0; i < 50; i++) {
    res = await request(front.port, { path: '/api/v1/slow/health' });
    if (res.status === 200) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { service: 'slow', status: 'ok' });
  assert.equal(up.seen.at(-1).url, '/health');
  assert.equal(up.seen.at(-1).headers['x-forwarded-for'], '127.0.0.1, 127.0.0.1');
  // The header comes from the gateway that routed it, not the stage in front.
  const direct = await request(behind.port, { path: '/api/v1/slow/health' });
  assert.equal(res.headers['x-psa-gateway'], direct.headers['x-psa-gateway']);
  assert.ok(res.headers['x-psa-gateway']);

  const own = await request(front.port, { path: '/health' });
  assert.equal(own.status, 200, 'a forwarding stage with no services of its own is healthy');
  assert.deepEqual(own.json.upstreams.forward, { host: '127.0.0.1', port: behind.port });
});
