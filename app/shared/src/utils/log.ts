/**
 * One JSON object per line: PM2 writes stdout and stderr to
 * logs/<service>.out.log and .err.log, where a line is one event.
 */
type Level = 'debug' | 'info' | 'warn' | 'error';
type Fields = Record<string, unknown>;

let serviceName = process.env.PSA_SERVICE || 'psa';

export function setLogService(name: string): void {
  serviceName = name;
}

function write(level: Level, msg: string, fields?: Fields): void {
  if (level === 'debug' && !process.env.PSA_DEBUG) {
    return;
  }
  const line = JSON.stringify({
    time: new Date().toISOString(),
    level,
    service: serviceName,
    pid: process.pid,
    msg,
    ...fields,
  });
  if (level === 'error' || level === 'warn') {
    process.stderr.write(line + '\n');
  } else {
    process.stdout.write(line + '\n');
  }
}

export function errorText(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) {
    // net.connect to "localhost" tries ::1 and 127.0.0.1 and reports both.
    return err.errors.map((e) => errorText(e)).join('; ');
  }
  if (err instanceof Error) {
    return err.message || (err as NodeJS.ErrnoException).code || err.name;
  }
  return String(err);
}

export const log = {
  debug: (msg: string, fields?: Fields) => write('debug', msg, fields),
  info: (msg: string, fields?: Fields) => write('info', msg, fields),
  warn: (msg: string, fields?: Fields) => write('warn', msg, fields),
  error: (msg: string, fields?: Fields) => write('error', msg, fields),
};
