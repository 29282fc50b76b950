#!/bin/sh
# /usr/local/bin/utilitarian, installed by deploy/install.sh. Runs a utilitarian command the way
# the units run it: as user utilitarian, with /var/lib/utilitarian and /run/utilitarian, and the
# broker password handed over by systemd (LoadCredential=, so "${CREDENTIALS_DIRECTORY}" in the
# TOML resolves). The shell then sees what the services see, and whatever a command creates in
# the state directory (the SQLite store, its WAL) belongs to the service user, never to root.
# Needs root (systemd-run); for anyone else, or with UTILITARIAN_DIRECT=1, it runs the program
# directly. Files named on the command line must be readable by user utilitarian; relative
# names work where that user may enter the current directory (not in /root: use absolute names).
set -eu
BIN=/opt/utilitarian/bin/utilitarian
if [ "$(id -u)" != 0 ] || [ -n "${UTILITARIAN_DIRECT:-}" ] || [ ! -d /run/systemd/system ]; then
    exec "$BIN" "$@"
fi
if [ -t 0 ] && [ -t 1 ]; then io=--pty; else io=--pipe; fi
wd=/
if setpriv --reuid=utilitarian --regid=utilitarian --init-groups test -x "$PWD" 2>/dev/null; then wd=$PWD; fi
exec systemd-run --quiet --wait --collect "$io" --working-directory="$wd" \
    --description="utilitarian $*" \
    --property=User=utilitarian --property=Group=utilitarian --property=UMask=0027 \
    --property=StateDirectory=utilitarian --property=StateDirectoryMode=0750 \
    --property=RuntimeDirectory=utilitarian --property=RuntimeDirectoryMode=0750 \
    --property=RuntimeDirectoryPreserve=yes \
    --property=ConfigurationDirectory=utilitarian --property=ConfigurationDirectoryMode=0750 \
    --property=LoadCredential=broker-password:/etc/utilitarian/broker-password \
    --setenv=UTILITARIAN_CONFIG="${UTILITARIAN_CONFIG:-/etc/utilitarian/utilitarian.toml}" \
    --setenv=TERM="${TERM:-dumb}" \
    "$BIN" "$@"
