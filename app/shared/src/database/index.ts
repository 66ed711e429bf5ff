import { Pool, PoolClient } from 'pg';

import { intSetting } from '../utils/env';
import { errorText, log } from '../utils/log';

let pool: Pool | undefined;

/** The process's PostgreSQL pool, created on first use from POSTGRES_*. */
export function getPool(): Pool {
  if (!pool) {
    const env = process.env;
    pool = new Pool({
      host: env.POSTGRES_HOST || '127.0.0.1',
      port: intSetting('POSTGRES_PORT', 5432),
      database: env.POSTGRES_DB || 'psa_platform',
      user: env.POSTGRES_USER || 'psa_app',
      password: env.POSTGRES_PASSWORD,
      max: intSetting('POSTGRES_POOL_MAX', 20),
      idleTimeoutMillis: intSetting('POSTGRES_POOL_IDLE_TIMEOUT_MS', 30000),
      connectionTimeoutMillis: intSetting('POSTGRES_POOL_CONNECTION_TIMEOUT_MS', 2000),
      // A server that stops answering must not hold a request forever.
      query_timeout: intSetting('POSTGRES_QUERY_TIMEOUT_MS', 15000),
      application_name: process.env.PSA_SERVICE || 'psa',
    });
    // An idle client losing its connection emits here; without a listener
    // the process would crash. The pool drops that client by itself.
    pool.on('error', (err) => log.warn('postgres idle client error', { error: errorText(err) }));
  }
  return pool;
}

/** Round trip to PostgreSQL for health: SELECT 1 on a pooled connection. */
export async function checkPostgres(): Promise<void> {
  await getPool().query('SELECT 1');
}

/** Run fn in a transaction on one pooled client. */
export async function transaction<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await getPool().connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

// 42P07 duplicate_table and 23505 unique_violation on pg_type: two sessions
// running the same CREATE ... IF NOT EXISTS at once can both miss the object
// and one then fails on the catalog. The object exists either way.
const ALREADY_EXISTS = new Set(['42P07', '42710', '23505']);

/**
 * Apply idempotent DDL once per process, serialised across all instances
 * (PM2 starts several at once) by a transaction-scoped advisory lock.
 */
export async function ensureSchema(lockName: string, statements: string[]): Promise<void> {
  await transaction(async (client) => {
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [lockName]);
    for (const sql of statements) {
      await client.query('SAVEPOINT ddl');
      try {
        await client.query(sql);
      } catch (err) {
        if (!ALREADY_EXISTS.has((err as { code?: string }).code ?? '')) {
          throw err;
        }
        await client.query('ROLLBACK TO SAVEPOINT ddl');
      }
    }
  });
}

export async function closePostgres(): Promise<void> {
  if (pool) {
    const closing = pool;
    pool = undefined;
    await closing.end();
  }
}
