'use strict';
// A service whose dependencies refuse or never answer still answers /health
// quickly, with 503 and each dependency's error, and still stops on SIGINT.
const assert = require('node:assert/strict');
const { test } = require('node:test');

const { freePort, request, silentServer, startService, tempRoot } = require('./helpers');

test('health is 503 within ~1 s when PostgreSQL and RabbitMQ hang', async (t) => {
  const silent = await silentServer();
  t.after(() => silent.close());
  const port = await freePort();
  const svc = startService('tickets', {
    APP_ROOT: tempRoot(),
    PORT: String(port),
    PSA_RELEASE: '2024.06.01-abc123',
    POSTGRES_HOST: '127.0.0.1',
    POSTGRES_PORT: String(silent.port),
    RABBITMQ_URL: `amqp://u:p@127.0.0.1:${silent.port}/psa`,
  });
  t.after(() => svc.child.kill('SIGKILL'));
  await svc.ready;

  // Several at once: they share one probe per dependency and all answer fast.
  const answers = await Promise.all(Array.from({ length: 10 }, () => request(port, { path: '/health' })));
  for (const res of answers) {
    assert.equal(res.status, 503);
    assert.ok(res.ms < 1800, `health took ${res.ms} ms`);
  }
  const body = answers[0].json;
  assert.equal(body.service, 'tickets');
  assert.equal(body.status, 'degraded');
  assert.equal(body.version, '2024.06.01-abc123');
  assert.equal(body.pid, svc.child.pid);
  assert.deepEqual(Object.keys(body.dependencies).sort(), ['postgres', 'rabbitmq']);
  assert.equal(body.dependencies.postgres.status, 'down');
  assert.match(body.dependencies.postgres.error, /did not answer within 1000 ms/);
  assert.equal(body.dependencies.rabbitmq.status, 'down');
  assert.equal(typeof body.dependencies.rabbitmq.latency_ms, 'number');

  // A request that needs the database fails as unavailable, not as a crash.
  const created = await request(port, {
    method: 'POST', path: '/api/v1/tickets', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ title: 'printer' }),
  });
  assert.equal(created.status, 503);
  assert.equal(created.json.error, 'dependency_unavailable');

  const begun = Date.now();
  svc.child.kill('SIGINT');
  const { code } = await svc.exited;
  assert.equal(code, 0, svc.output());
  assert.ok(Date.now() - begun < 4000, `stopping took ${Date.now() - begun} ms`);
});

test('health is 503 at once with the errors when Redis and RabbitMQ refuse', async (t) => {
  const [port, closed] = [await freePort(), await freePort()];
  const svc = startService('reports', {
    APP_ROOT: tempRoot(),
    PORT: String(port),
    REDIS_HOST: '127.0.0.1',
    REDIS_PORT: String(closed),
    RABBITMQ_URL: `amqp://127.0.0.1:${closed}`,
  });
  t.after(() => svc.child.kill('SIGKILL'));
  await svc.ready;

  const res = await request(port, { path: '/health' });
  assert.equal(res.status, 503);
  assert.ok(res.ms < 1000, `health took ${res.ms} ms`);
  assert.equal(res.json.service, 'reports');
  assert.match(res.json.version, /^\d+\.\d+\.\d+$/, 'version from package.json without PSA_RELEASE');
  assert.equal(res.json.dependencies.redis.status, 'down');
  assert.match(res.json.dependencies.redis.error, /ECONNREFUSED|not connected/);
  assert.match(res.json.dependencies.rabbitmq.error, /ECONNREFUSED/);

  svc.child.kill('SIGTERM');
  assert.equal((await svc.exited).code, 0, svc.output());
});

test('unknown paths and methods answer JSON 404 and 405', async (t) => {
  const port = await freePort();
  const svc = startService('billing', { APP_ROOT: tempRoot(), PORT: String(port) });
  t.after(() => svc.child.kill('SIGKILL'));
  await svc.ready;
  const missing = await request(port, { path: '/api/v1/billing/nothing' });
  assert.equal(missing.status, 404);
  assert.equal(missing.json.service, 'billing');
  const wrong = await request(port, { method: 'DELETE', path: '/api/v1/billing' });
  assert.equal(wrong.status, 405);
});

test('every service sends ready and answers /health with its own name', async (t) => {
  const closed = await freePort();
  const names = ['api-gateway', 'auth', 'crm', 'tickets', 'billing', 'projects', 'assets', 'reports'];
  await Promise.all(names.map(async (name) => {
    const port = await freePort();
    const svc = startService(name, {
      APP_ROOT: tempRoot(),
      PORT: String(port),
      POSTGRES_PORT: String(closed),
      REDIS_PORT: String(closed),
      RABBITMQ_URL: `amqp://127.0.0.1:${closed}`,
    });
    t.after(() => svc.child.kill('SIGKILL'));
    await svc.ready;
    const res = await request(port, { path: '/health' });
    assert.equal(res.json.service, name);
    assert.equal(res.status, 503, `${name}: its dependencies (or upstream map) are missing`);
    svc.child.kill('SIGINT');
    assert.equal((await svc.exited).code, 0, svc.output());
  }));
});

test('ready waits for the dependencies, within WARMUP_TIMEOUT_MS', async (t) => {
  // Redis and RabbitMQ refuse: the service waits its warm-up time for them
  // before it takes traffic and says ready, then starts anyway.
  const refused = await freePort();
  const port = await freePort();
  const started = Date.now();
  const svc = startService('reports', {
    APP_ROOT: tempRoot(),
    PORT: String(port),
    WARMUP_TIMEOUT_MS: '1500',
    REDIS_HOST: '127.0.0.1',
    REDIS_PORT: String(refused),
    RABBITMQ_URL: `amqp://u:p@127.0.0.1:${refused}/psa`,
  });
  t.after(() => svc.child.kill('SIGKILL'));
  await svc.ready;
  const waited = Date.now() - started;
  assert.ok(waited >= 1400, `ready after ${waited} ms, before the warm-up ended`);
  const res = await request(port, { path: '/health' });
  assert.equal(res.status, 503);
});
