#!/bin/sh
# Remove utilitarian from this server: stop and disable every unit (workers drain), remove the
# units, the virtualenv and the `utilitarian` command. Keeps /etc/utilitarian, the data in
# /var/lib/utilitarian and the user utilitarian unless --purge is given.
#   deploy/uninstall.sh [--purge]
set -eu

PREFIX=/opt/utilitarian
LIBDIR=/usr/local/lib
UNITDIR=$LIBDIR/systemd/system
say() { echo "==> $*"; }
purge=
case ${1:-} in
    --purge) purge=1 ;;
    "") ;;
    *) echo "uninstall.sh: unknown argument $1 (only --purge)" >&2; exit 64 ;;
esac
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run me as root" >&2; exit 1; }

say "stopping and disabling the units"
systemctl stop utilitarian-worker-monthly.timer utilitarian.target 'utilitarian-worker@*.service' \
    utilitarian-beat.service utilitarian-migrate.service 2>/dev/null || true
# Disabling the template removes the symlinks of all its enabled instances.
systemctl disable --quiet utilitarian-worker-monthly.timer utilitarian.target utilitarian-worker@.service \
    utilitarian-beat.service utilitarian-migrate.service 2>/dev/null || true

say "removing the units, $PREFIX and /usr/local/bin/utilitarian"
rm -f "$UNITDIR/utilitarian.target" "$UNITDIR/utilitarian-worker@.service" "$UNITDIR/utilitarian-beat.service" \
    "$UNITDIR/utilitarian-migrate.service" "$UNITDIR/utilitarian-worker-monthly.timer"
rm -rf "$UNITDIR/utilitarian-worker@amr-monthly.service.d"
rm -f "$LIBDIR/sysusers.d/utilitarian.conf" "$LIBDIR/tmpfiles.d/utilitarian.conf" /usr/local/bin/utilitarian
rm -rf "$PREFIX"
if [ -n "$purge" ]; then
    say "purging /etc/utilitarian, /var/lib/utilitarian, /run/utilitarian, drop-ins and the user utilitarian"
    rm -rf /etc/utilitarian /var/lib/utilitarian /run/utilitarian /etc/systemd/system/utilitarian*
    if getent passwd utilitarian >/dev/null; then userdel utilitarian; fi
    if getent group utilitarian >/dev/null; then groupdel utilitarian; fi
else
    say "kept /etc/utilitarian, /var/lib/utilitarian and the user utilitarian (--purge removes them)"
fi
systemctl daemon-reload
systemctl reset-failed 'utilitarian*' 2>/dev/null || true
say "utilitarian removed"
