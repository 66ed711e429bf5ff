import fs from 'node:fs';
import path from 'node:path';

/**
 * The version a service reports: PSA_RELEASE when set, else the name of the
 * release directory it runs from (<root>/releases/<version>/services/...,
 * reached through the 'current' link), else its package.json version.
 */
export function releaseVersion(serviceDir: string, env: NodeJS.ProcessEnv = process.env): string {
  if (env.PSA_RELEASE) {
    return env.PSA_RELEASE;
  }
  let real = serviceDir;
  try {
    real = fs.realpathSync(serviceDir);
  } catch {
    // Keep the path as given; the package.json fallback below still works.
  }
  const match = /[/\\]releases[/\\]([^/\\]+)[/\\]services[/\\]/.exec(real + path.sep);
  if (match) {
    return match[1];
  }
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(serviceDir, 'package.json'), 'utf8'));
    if (typeof pkg.version === 'string') {
      return pkg.version;
    }
  } catch {
    // Fall through to 'unknown'.
  }
  return 'unknown';
}
