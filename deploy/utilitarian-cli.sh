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
# The command runs as a transient unit that outlives systemd-run: a TERM or HUP to systemd-run, or a
# Ctrl-C while output goes to a pipe (no --pty), only ends the waiting, not the unit, which kept a
# hand-started `beat` or `worker` running as run-uN.service. So this shell stays (no exec), waits,
# and on INT, TERM or HUP stops the unit (the command drains as under its own unit: KillMode=mixed)
# before it exits 128+signal. With a terminal (--pty) Ctrl-C reaches the command itself as SIGINT.
unit=run-utilitarian-$$-$(date +%s%N).service
caught=
trap 'caught=130' INT
trap 'caught=143' TERM
trap 'caught=129' HUP
# An asynchronous command of a script reads /dev/null unless given stdin explicitly (fd 3 here;
# /dev/null when this command was started with stdin closed).
{ command exec 3<&0; } 2>/dev/null || exec 3</dev/null
systemd-run --quiet --wait --collect "$io" --unit="$unit" --working-directory="$wd" \
    --description="utilitarian $*" \
    --property=User=utilitarian --property=Group=utilitarian --property=UMask=0027 \
    --property=KillMode=mixed \
    --property=StateDirectory=utilitarian --property=StateDirectoryMode=0750 \
    --property=RuntimeDirectory=utilitarian --property=RuntimeDirectoryMode=0750 \
    --property=RuntimeDirectoryPreserve=yes \
    --property=ConfigurationDirectory=utilitarian --property=ConfigurationDirectoryMode=0750 \
    --property=LoadCredential=broker-password:/etc/utilitarian/broker-password \
    --setenv=UTILITARIAN_CONFIG="${UTILITARIAN_CONFIG:-/etc/utilitarian/utilitarian.toml}" \
    --setenv=TERM="${TERM:-dumb}" \
    "$BIN" "$@" <&3 3<&- &
run=$!
exec 3<&-
rc=0
wait "$run" || rc=$?
if [ -z "$caught" ]; then
    exit "$rc"
fi
# A signal ended the wait. Stop the unit (blocking while it drains); while systemd-run lives on it
# may not have created the unit yet ("not loaded"), so try again until systemd-run is gone too.
running() { [ -r "/proc/$run/stat" ] && [ "$(cut -d ' ' -f 3 "/proc/$run/stat")" != Z ]; }
systemctl stop "$unit" 2>/dev/null || true
while running; do
    sleep 0.2
    systemctl stop "$unit" 2>/dev/null || true
done
wait "$run" 2>/dev/null || true
exit "$caught"
