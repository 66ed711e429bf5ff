import fs from 'node:fs';
import path from 'node:path';

/** Where psa-infra installs the app when APP_ROOT does not say otherwise. */
export const DEFAULT_APP_ROOT = '/opt/psa-platform';

export class EnvFileError extends Error {}

const LINE = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/;

/**
 * Parse a .env file as psa-infra renders it: NAME="value" lines whose values
 * are JSON strings, with # comments and blank lines. An unquoted value is
 * taken as it stands, as the PM2 ecosystem file does.
 */
export function parseEnvFile(text: string, file = '.env'): Record<string, string> {
  const env: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line.trim() === '' || line.trimStart().startsWith('#')) {
      continue;
    }
    const match = LINE.exec(line);
    if (!match) {
      throw new EnvFileError(`${file}:${i + 1}: expected NAME=value`);
    }
    const [, name, raw] = match;
    if (raw.startsWith('"')) {
      try {
        const value: unknown = JSON.parse(raw);
        if (typeof value !== 'string') {
          throw new Error('not a string');
        }
        env[name] = value;
      } catch {
        throw new EnvFileError(`${file}:${i + 1}: ${name} is not a valid JSON string`);
      }
    } else {
      env[name] = raw;
    }
  }
  return env;
}

/** The app root: APP_ROOT, else psa-infra's default. */
export function appRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.APP_ROOT || DEFAULT_APP_ROOT;
}

/** The shared .env file: APP_ENV_FILE, else <app root>/.env. */
export function envFilePath(env: NodeJS.ProcessEnv = process.env): string {
  return env.APP_ENV_FILE || path.join(appRoot(env), '.env');
}

export interface LoadedEnv {
  file: string;
  /** Names taken from the file; names already in the environment are kept. */
  loaded: string[];
  /** Why the file was not read, when it was not (e.g. it does not exist). */
  skipped?: string;
}

/**
 * Fill in variables missing from the environment from the shared .env file.
 * Under PM2 the ecosystem already passes them, so this matters when a service
 * runs by hand. A missing file is not an error; a malformed one is.
 */
export function loadEnvFile(env: NodeJS.ProcessEnv = process.env): LoadedEnv {
  const file = envFilePath(env);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    return { file, loaded: [], skipped: (err as NodeJS.ErrnoException).code ?? String(err) };
  }
  const loaded: string[] = [];
  for (const [name, value] of Object.entries(parseEnvFile(text, file))) {
    if (env[name] === undefined) {
      env[name] = value;
      loaded.push(name);
    }
  }
  return { file, loaded };
}

/** An integer setting from the environment, or its default when unset or empty. */
export function intSetting(name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}
