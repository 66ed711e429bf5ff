import Redis from 'ioredis';

import { intSetting } from '../utils/env';
import { errorText, log } from '../utils/log';

let client: Redis | undefined;
let lastError: string | undefined;
let lastLogged = 0;

/** The process's Redis client, created (and connecting) on first use. */
export function getRedis(): Redis {
  if (!client) {
    const env = process.env;
    client = new Redis({
      host: env.REDIS_HOST || '127.0.0.1',
      port: intSetting('REDIS_PORT', 6379),
      password: env.REDIS_PASSWORD || undefined,
      connectTimeout: intSetting('REDIS_CONNECT_TIMEOUT_MS', 2000),
      // Fail a command after one reconnect attempt instead of twenty, so a
      // request does not wait long on a Redis that is down.
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(times * 100, 2000),
      connectionName: env.PSA_SERVICE || 'psa',
    });
    client.on('ready', () => {
      lastError = undefined;
      log.info('redis ready');
    });
    client.on('error', (err) => {
      lastError = errorText(err);
      // Reconnects fail every retry; one line every 30 s is enough.
      if (Date.now() - lastLogged > 30000) {
        lastLogged = Date.now();
        log.warn('redis error', { error: lastError });
      }
    });
  }
  return client;
}

/** Round trip to Redis for health: PING, failing at once when not connected. */
export async function checkRedis(): Promise<void> {
  const redis = getRedis();
  if (redis.status !== 'ready') {
    throw new Error(`not connected (${redis.status})${lastError ? `: ${lastError}` : ''}`);
  }
  await redis.ping();
}

export async function closeRedis(): Promise<void> {
  if (client) {
    const closing = client;
    client = undefined;
    if (closing.status === 'ready') {
      await closing.quit().catch(() => closing.disconnect());
    } else {
      closing.disconnect();
    }
  }
}
