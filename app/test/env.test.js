'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');

const { parseEnvFile, loadEnvFile, envFilePath, appRoot, intSetting } = require('../shared/dist');
const { tempRoot } = require('./helpers');

// What templates/app/env.j2 renders: comments, blank lines, JSON strings.
const RENDERED = [
  '# Managed by psa-infra (templates/app/env.j2) for psa-app.',
  '# Format: NAME="value", each value a JSON string',
  'NODE_ENV="production"',
  '',
  'POSTGRES_HOST="10.0.30.10"',
  'POSTGRES_PORT="5432"',
  'POSTGRES_PASSWORD="p\\"w\\\\d#=x y"',
  'REDIS_PASSWORD="caf\\u00e9"',
  'RABBITMQ_URL="amqp://psa_app:p%40ss%2Fw@10.0.20.30:5672/psa"',
  '',
].join('\n');

test('parses the file env.j2 renders, JSON escapes included', () => {
  assert.deepEqual(parseEnvFile(RENDERED), {
    NODE_ENV: 'production',
    POSTGRES_HOST: '10.0.30.10',
    POSTGRES_PORT: '5432',
    POSTGRES_PASSWORD: 'p"w\\d#=x y',
    REDIS_PASSWORD: 'café',
    RABBITMQ_URL: 'amqp://psa_app:p%40ss%2Fw@10.0.20.30:5672/psa',
  });
});

test('takes unquoted values as they stand and tolerates CRLF', () => {
  assert.deepEqual(parseEnvFile('A=plain value\r\nB=\r\nC="x"\r\n'), { A: 'plain value', B: '', C: 'x' });
});

test('names the file and line of a malformed entry', () => {
  assert.throws(() => parseEnvFile('A="ok"\nexport B=1\n', '/x/.env'), /\/x\/\.env:2: expected NAME=value/);
  assert.throws(() => parseEnvFile('A="unterminated\n', '/x/.env'), /\/x\/\.env:1: A is not a valid JSON string/);
  // A quoted value that is JSON but not a string is not what env.j2 writes.
  assert.throws(() => parseEnvFile('A="1" "2"\n'), /A is not a valid JSON string/);
});

test('the .env path is APP_ENV_FILE, else APP_ROOT/.env, else /opt/psa-platform/.env', () => {
  assert.equal(envFilePath({}), '/opt/psa-platform/.env');
  assert.equal(appRoot({}), '/opt/psa-platform');
  assert.equal(envFilePath({ APP_ROOT: '/srv/psa' }), '/srv/psa/.env');
  assert.equal(envFilePath({ APP_ROOT: '/srv/psa', APP_ENV_FILE: '/etc/psa.env' }), '/etc/psa.env');
});

test('fills in only variables the environment does not have', () => {
  const root = tempRoot();
  fs.writeFileSync(path.join(root, '.env'), RENDERED);
  const env = { APP_ROOT: root, POSTGRES_HOST: 'from-pm2' };
  const result = loadEnvFile(env);
  assert.equal(env.POSTGRES_HOST, 'from-pm2');
  assert.equal(env.POSTGRES_PASSWORD, 'p"w\\d#=x y');
  assert.ok(!result.loaded.includes('POSTGRES_HOST'));
  assert.ok(result.loaded.includes('RABBITMQ_URL'));
});

test('a missing .env is skipped, not an error', () => {
  const env = { APP_ROOT: tempRoot() };
  const result = loadEnvFile(env);
  assert.equal(result.skipped, 'ENOENT');
  assert.deepEqual(result.loaded, []);
});

test('integer settings reject garbage instead of becoming NaN', () => {
  assert.equal(intSetting('X', 7, {}), 7);
  assert.equal(intSetting('X', 7, { X: '' }), 7);
  assert.equal(intSetting('X', 7, { X: '20' }), 20);
  assert.throws(() => intSetting('X', 7, { X: '2O' }), /X must be a non-negative integer/);
});
