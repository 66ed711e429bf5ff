import path from 'node:path';

import { HttpError, Router, ensureSchema, getPool, log, readJson, runService, sendJson, errorText } from '@psa/shared';

const NAME = 'crm';

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS crm_customers (
     id bigserial PRIMARY KEY,
     name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
     email text,
     created_at timestamptz NOT NULL DEFAULT now()
   )`,
];

let schema: Promise<void> | undefined;

/** Create the table once per process; retried on the next call after a failure. */
function schemaReady(): Promise<void> {
  if (!schema) {
    schema = ensureSchema('psa:crm:schema', SCHEMA);
    schema.catch(() => {
      schema = undefined;
    });
  }
  return schema;
}

const router = new Router()
  .get('/api/v1/crm', () => ({ service: NAME, version: running.version, pid: process.pid }))
  .get('/api/v1/crm/customers', async ({ url }) => {
    await schemaReady();
    const limit = Math.min(Math.max(Number(url.searchParams.get('limit')) || 50, 1), 500);
    const { rows } = await getPool().query(
      'SELECT id, name, email, created_at FROM crm_customers ORDER BY id DESC LIMIT $1',
      [limit],
    );
    return { service: NAME, customers: rows };
  })
  .post('/api/v1/crm/customers', async ({ req, res }) => {
    const body = (await readJson(req)) as { name?: unknown; email?: unknown } | null;
    const name = typeof body?.name === 'string' ? body.name.trim() : '';
    if (name === '' || name.length > 200) {
      throw new HttpError(400, 'invalid_customer', 'name must be a string of 1 to 200 characters');
    }
    if (body?.email !== undefined && typeof body.email !== 'string') {
      throw new HttpError(400, 'invalid_customer', 'email must be a string');
    }
    await schemaReady();
    const { rows } = await getPool().query(
      'INSERT INTO crm_customers (name, email) VALUES ($1, $2) RETURNING id, name, email, created_at',
      [name, body?.email ?? null],
    );
    sendJson(res, 201, { service: NAME, customer: rows[0] });
  });

const running = runService({
  name: NAME,
  defaultPort: 3020,
  serviceDir: path.resolve(__dirname, '..'),
  router,
  dependencies: ['postgres'],
  start: () => {
    schemaReady().catch((err) => log.warn('schema not ready yet', { error: errorText(err) }));
  },
});
