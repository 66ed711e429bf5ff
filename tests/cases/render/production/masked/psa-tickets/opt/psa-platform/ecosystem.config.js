// Managed by psa-infra (templates/app/ecosystem.config.js.j2) for psa-tickets.
// Local changes are overwritten on the next apply.
//
// The services placed on this container, in the inventory's order. Each runs
// the release under current/, which the deploy points at releases/<version>.
'use strict';

const fs = require('fs');
const path = require('path');

// PM2 has no env_file option, so the shared .env next to this file is read
// here: passwords stay in the one 0600 file instead of being copied into this one.
function readEnv(file) {
  const env = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (match) {
      env[match[1]] = match[2].startsWith('"') ? JSON.parse(match[2]) : match[2];
    }
  }
  return env;
}

const shared = readEnv(path.join(__dirname, '.env'));

// Graceful reload (pm2 reload): a new instance counts as up once it sends
// process.send('ready') or after listen_timeout, and an old one gets
// kill_timeout to finish its requests after SIGINT before it is killed.

module.exports = {
  apps: [
    {
      name: "tickets",
      script: "/opt/psa-platform/current/services/tickets/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 5,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3030,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/tickets.out.log",
      error_file: "/opt/psa-platform/logs/tickets.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
  ],
};
