import { getPool } from '../database';
import { Router } from './http';
import { RunningService, runService } from './service';

/**
 * A service with nothing but /health and GET /api/v1/<name>, which answers
 * with its name and PostgreSQL's clock: a placeholder that still proves the
 * service reaches its database.
 */
export function runBasicService(name: string, defaultPort: number, serviceDir: string): RunningService {
  const router = new Router().get(`/api/v1/${name}`, async () => {
    const { rows } = await getPool().query<{ now: Date }>('SELECT now() AS now');
    return { service: name, version: running.version, pid: process.pid, database_time: rows[0].now };
  });
  const running = runService({ name, defaultPort, serviceDir, router, dependencies: ['postgres'] });
  return running;
}
