import { errorText } from './log';
import { withTimeout } from './time';

export type Check = () => Promise<void>;

export interface DependencyStatus {
  status: 'ok' | 'down';
  latency_ms: number;
  error?: string;
}

/**
 * Wrap a dependency check so a hanging dependency costs a health request at
 * most timeoutMs, and concurrent health requests share one probe instead of
 * piling up connections on a dependency that does not answer.
 */
export function probe(check: Check): (timeoutMs: number) => Promise<DependencyStatus> {
  let running: Promise<void> | undefined;
  return async (timeoutMs) => {
    const started = process.hrtime.bigint();
    if (!running) {
      running = check().finally(() => {
        running = undefined;
      });
      // The probe may outlive this request; its failure is reported below.
      running.catch(() => undefined);
    }
    const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10;
    try {
      await withTimeout(running, timeoutMs, 'the check');
      return { status: 'ok', latency_ms: elapsed() };
    } catch (err) {
      return { status: 'down', latency_ms: elapsed(), error: errorText(err) };
    }
  };
}
