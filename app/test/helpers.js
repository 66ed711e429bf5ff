'use strict';
// Helpers for the integration tests: start a built service as PM2 would
// (an IPC channel for process.send, PORT and the .env settings in the
// environment) and fake dependencies that refuse or never answer.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const APP = path.resolve(__dirname, '..');

// Ports for the services under test come from below the kernel's ephemeral
// range (32768 and up), so no client socket of a concurrent test file can
// hold one when the service binds it; each is checked free on every address.
async function freePort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const server = net.createServer();
    const bound = await new Promise((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, () => resolve(true));
    });
    if (bound) {
      await new Promise((resolve) => server.close(resolve));
      return port;
    }
  }
}

/** A TCP server that accepts connections and never sends a byte. */
async function silentServer() {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

function tempRoot() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'psa-app-test-'));
}

/**
 * Start services/<name>/dist/index.js and resolve once it sends 'ready'.
 * The returned handle collects its output and resolves exited with the code.
 */
function startService(name, env, { readyTimeout = 5000 } = {}) {
  const child = spawn(process.execPath, [path.join(APP, 'services', name, 'dist', 'index.js')], {
    env: {
      PATH: process.env.PATH,
      LD_LIBRARY_PATH: process.env.LD_LIBRARY_PATH ?? '',
      // The dependencies here are down on purpose: start without waiting for
      // them (a test that checks the wait sets its own value).
      WARMUP_TIMEOUT_MS: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} sent no 'ready' in ${readyTimeout} ms:\n${output}`)), readyTimeout);
    child.on('message', (message) => {
      if (message === 'ready') {
        clearTimeout(timer);
        resolve();
      }
    });
    exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before 'ready':\n${output}`));
    });
  });
  return { child, ready, exited, output: () => output };
}

/** One HTTP request; resolves with status, headers, parsed JSON body and timing. */
function request(port, { method = 'GET', path: target = '/', body, headers = {}, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let socket;
    const req = http.request({ host: '127.0.0.1', port, method, path: target, headers, agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, json, ms: Date.now() - started, socket });
      });
    });
    req.on('socket', (s) => (socket = s));
    req.on('error', reject);
    req.end(body);
  });
}

module.exports = { APP, freePort, silentServer, startService, request, tempRoot };
