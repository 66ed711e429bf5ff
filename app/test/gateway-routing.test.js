'use strict';
const assert = require('node:assert/strict');
const { test } = require('node:test');

const {
  routeRequest, parseUpstreams, parseForward, endToEndHeaders,
} = require('../services/api-gateway/dist/routing');

test('routes /api/v1/<service>/health to the service\'s own /health', () => {
  assert.deepEqual(routeRequest('/api/v1/crm/health'), { service: 'crm', path: '/health' });
  assert.deepEqual(routeRequest('/api/v1/crm/health/'), { service: 'crm', path: '/health' });
  assert.deepEqual(routeRequest('/api/v1/api-gateway/health?x=1'), { service: 'api-gateway', path: '/health?x=1' });
});

test('passes other paths on unchanged, query included', () => {
  assert.deepEqual(routeRequest('/api/v1/tickets'), { service: 'tickets', path: '/api/v1/tickets' });
  assert.deepEqual(routeRequest('/api/v1/tickets/42'), { service: 'tickets', path: '/api/v1/tickets/42' });
  assert.deepEqual(routeRequest('/api/v1/crm/customers?limit=5&q=a%20b'),
    { service: 'crm', path: '/api/v1/crm/customers?limit=5&q=a%20b' });
  // Only the exact segment 'health' is the health check.
  assert.deepEqual(routeRequest('/api/v1/crm/health/deep'), { service: 'crm', path: '/api/v1/crm/health/deep' });
  assert.deepEqual(routeRequest('/api/v1/crm/healthz'), { service: 'crm', path: '/api/v1/crm/healthz' });
});

test('does not route what is not /api/v1/<service>', () => {
  for (const target of ['/', '/health', '/api/v1', '/api/v1/', '/api/v2/crm/x', '/api/v1//x', '/api/v1/CRM/x', '/api/v1/../x']) {
    assert.equal(routeRequest(target), null, target);
  }
});

test('reads the map upstreams.json.j2 renders', () => {
  const map = parseUpstreams(JSON.stringify({
    $comment: 'Managed by psa-infra',
    services: { 'api-gateway': { host: '127.0.0.1', port: 3000 }, crm: { host: '10.0.20.52', port: 3020 } },
  }));
  assert.deepEqual([...map], [['api-gateway', { host: '127.0.0.1', port: 3000 }], ['crm', { host: '10.0.20.52', port: 3020 }]]);
});

test('rejects a map it cannot route with, saying what is wrong', () => {
  assert.throws(() => parseUpstreams('{', 'u.json'), /u\.json: not valid JSON/);
  assert.throws(() => parseUpstreams('{"crm": {"host": "h", "port": 1}}', 'u.json'), /expected an object under "services"/);
  assert.throws(() => parseUpstreams('{"services": {"crm": {"host": "", "port": 1}}}'), /services\.crm\.host/);
  assert.throws(() => parseUpstreams('{"services": {"crm": {"host": "h", "port": "3020"}}}'), /services\.crm\.port/);
  assert.throws(() => parseUpstreams('{"services": {"crm": {"host": "h", "port": 70000}}}'), /services\.crm\.port/);
});

test('drops hop-by-hop headers, including those Connection names', () => {
  assert.deepEqual(
    endToEndHeaders({
      connection: 'keep-alive, x-secret-hop', 'keep-alive': 'timeout=5', 'transfer-encoding': 'chunked',
      'x-secret-hop': '1', 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'],
    }),
    { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] },
  );
});

test('reads the forwarding stage of a gateway that moved', () => {
  const text = JSON.stringify({ services: {}, forward: { host: '10.0.20.52', port: 3000 } });
  assert.deepEqual(parseForward(text), { host: '10.0.20.52', port: 3000 });
  assert.equal(parseForward(JSON.stringify({ services: {} })), undefined);
  assert.throws(() => parseForward('{"services": {}, "forward": {"host": "h"}}', 'u.json'), /u\.json: forward\.port/);
});
