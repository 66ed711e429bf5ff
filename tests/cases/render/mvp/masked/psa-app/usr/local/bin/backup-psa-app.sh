#!/bin/bash
# Managed by psa-infra (templates/app/backup-psa-app.sh.j2) for psa-app.
# Local changes are overwritten on the next apply.
#
# Archive the app's code and configuration into /backup/psa-app
# and delete archives older than 7 days.
# Only paths that exist are archived: before the first deploy there is no
# current release. The archive holds .env, so it is written 0600.
set -euo pipefail

ROOT=/opt/psa-platform
BACKUP_DIR=/backup/psa-app
RETENTION_DAYS=7

umask 077
mkdir -p -- "$BACKUP_DIR"

paths=()
for item in services shared config ecosystem.config.js .env; do
  if [ -e "$ROOT/$item" ]; then
    paths+=("$item")
  fi
done
# current is a link to releases/<version>: archive the release it points at.
if [ -L "$ROOT/current" ]; then
  release=$(readlink -f -- "$ROOT/current")
  if [ -d "$release" ] && [ "${release#"$ROOT"/}" != "$release" ]; then
    paths+=("${release#"$ROOT"/}")
  fi
fi
if [ -z "${paths[*]}" ]; then
  echo "backup-psa-app: nothing to archive under $ROOT" >&2
  exit 1
fi

archive="$BACKUP_DIR/psa-app-$(date +%Y%m%d_%H%M%S).tar.gz"
# Written under a temporary name so a failed run never leaves a partial
# archive that looks complete.
tar -czf "$archive.partial" -C "$ROOT" -- "${paths[@]}"
mv -- "$archive.partial" "$archive"
echo "backup-psa-app: wrote $archive (${paths[*]})"

find "$BACKUP_DIR" -maxdepth 1 -type f -name 'psa-app-*.tar.gz' \
  -mtime +"$RETENTION_DAYS" -delete
find "$BACKUP_DIR" -maxdepth 1 -type f -name 'psa-app-*.tar.gz.partial' \
  -mmin +720 -delete
