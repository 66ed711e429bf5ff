'use strict';
// Under a cluster primary, as PM2's cluster mode runs the services: a stopping
// instance leaves the cluster (a round trip to the primary) before it exits,
// so no connection the primary was still handing it is stranded, and new
// connections go to the instance that stays.
const assert = require('node:assert/strict');
const cluster = require('node:cluster');
const path = require('node:path');
const { test } = require('node:test');

const { APP, freePort, request, tempRoot } = require('./helpers');

function fork(env) {
  const worker = cluster.fork(env);
  const listening = new Promise((resolve, reject) => {
    worker.once('listening', resolve);
    worker.once('exit', (code) => reject(new Error(`worker exited with ${code} before listening`)));
  });
  const events = [];
  worker.on('disconnect', () => events.push('disconnect'));
  const exited = new Promise((resolve) => worker.once('exit', (code) => {
    events.push('exit');
    resolve(code);
  }));
  return { worker, listening, exited, events };
}

test('a stopping instance disconnects from the cluster before it exits', async (t) => {
  const [port, closed] = [await freePort(), await freePort()];
  cluster.setupPrimary({ exec: path.join(APP, 'services', 'auth', 'dist', 'index.js'), silent: true });
  const env = {
    APP_ROOT: tempRoot(),
    PORT: String(port),
    WARMUP_TIMEOUT_MS: '0',
    POSTGRES_PORT: String(closed),
  };
  const leaving = fork(env);
  const staying = fork(env);
  t.after(() => {
    for (const { worker } of [leaving, staying]) {
      if (!worker.isDead()) {
        worker.process.kill('SIGKILL');
      }
    }
  });
  await Promise.all([leaving.listening, staying.listening]);

  leaving.worker.process.kill('SIGINT');
  assert.equal(await leaving.exited, 0);
  assert.deepEqual(leaving.events, ['disconnect', 'exit']);
  assert.equal(leaving.worker.exitedAfterDisconnect, true, 'the instance exited without leaving the cluster');

  const answers = await Promise.all(Array.from({ length: 6 }, () => request(port, { path: '/health' })));
  assert.deepEqual(new Set(answers.map((a) => a.json.pid)), new Set([staying.worker.process.pid]));
});
