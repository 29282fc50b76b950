#!/bin/sh
# Upgrade this server to the release of this bundle: stop every running utilitarian unit (workers
# drain their in-flight tasks; systemd waits for them), install (deploy/install.sh; the
# configuration is kept), migrate the database schema, start again what was running.
#   deploy/upgrade.sh
# A configuration-only change needs none of this: `systemctl reload utilitarian-worker@NAME`.
set -eu

HERE=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "==> $*"; }
[ "$(id -u)" = 0 ] || { echo "upgrade.sh: run me as root" >&2; exit 1; }

# Services only: timers keep their schedule, the one-shot migration is started below anyway.
running=$(systemctl list-units --type=service --state=active --no-legend --plain 'utilitarian*' \
    | cut -d ' ' -f 1 | grep -vx 'utilitarian-migrate.service' || true)
target=$(systemctl is-active utilitarian.target || true)
if [ -n "$running" ]; then
    say "stopping (draining):" $running
    # shellcheck disable=SC2086
    systemctl stop $running
fi
"$HERE/deploy/install.sh"
say "migrating the database schema"
systemctl start utilitarian-migrate.service
if [ "$target" = active ]; then
    systemctl start utilitarian.target
fi
if [ -n "$running" ]; then
    say "starting:" $running
    # shellcheck disable=SC2086
    systemctl start $running
fi
say "upgraded to $(cat /opt/utilitarian/share/doc/utilitarian/VERSION)"
