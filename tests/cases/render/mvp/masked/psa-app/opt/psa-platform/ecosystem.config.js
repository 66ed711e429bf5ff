// Managed by psa-infra (templates/app/ecosystem.config.js.j2) for psa-app.
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
      name: "api-gateway",
      script: "/opt/psa-platform/current/services/api-gateway/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3000,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/api-gateway.out.log",
      error_file: "/opt/psa-platform/logs/api-gateway.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "auth",
      script: "/opt/psa-platform/current/services/auth/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3010,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/auth.out.log",
      error_file: "/opt/psa-platform/logs/auth.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "crm",
      script: "/opt/psa-platform/current/services/crm/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3020,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/crm.out.log",
      error_file: "/opt/psa-platform/logs/crm.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "tickets",
      script: "/opt/psa-platform/current/services/tickets/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 4,
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
    {
      name: "billing",
      script: "/opt/psa-platform/current/services/billing/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3040,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/billing.out.log",
      error_file: "/opt/psa-platform/logs/billing.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "projects",
      script: "/opt/psa-platform/current/services/projects/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3050,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/projects.out.log",
      error_file: "/opt/psa-platform/logs/projects.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "assets",
      script: "/opt/psa-platform/current/services/assets/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3060,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/assets.out.log",
      error_file: "/opt/psa-platform/logs/assets.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
    {
      name: "reports",
      script: "/opt/psa-platform/current/services/reports/dist/index.js",
      cwd: "/opt/psa-platform",
      exec_mode: 'cluster',
      instances: 2,
      env: {
        ...shared,
        NODE_ENV: "production",
        PORT: 3070,
        APP_ROOT: "/opt/psa-platform",
      },
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 10000,
      out_file: "/opt/psa-platform/logs/reports.out.log",
      error_file: "/opt/psa-platform/logs/reports.err.log",
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
    },
  ],
};
