#!/bin/sh
# Install or upgrade utilitarian on this server from a release bundle (deploy/bundle.sh): the
# program in a virtualenv under /opt/utilitarian, the systemd units, the system user, the
# configuration in /etc/utilitarian (written once, never overwritten) and the `utilitarian`
# command for operators. Starts nothing (docs/operations.md says what to enable); running it again
# upgrades in place (deploy/upgrade.sh stops and restarts the units around it).
#   deploy/install.sh [--broker-url amqp://USER@HOST:5672/VHOST]
# --broker-url goes into a newly written utilitarian.toml; the password never goes in the URL.
# PYTHON=/usr/bin/python3 (default) names the interpreter of the virtualenv.
set -eu

HERE=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/utilitarian
LIBDIR=/usr/local/lib
UNITDIR=$LIBDIR/systemd/system
ETC=/etc/utilitarian
PYTHON=${PYTHON:-/usr/bin/python3}
UNITS="utilitarian.target utilitarian-worker@.service utilitarian-beat.service utilitarian-migrate.service
utilitarian-worker-monthly.timer"
MONTHLY_DROPIN=utilitarian-worker@amr-monthly.service.d/exit-when-idle.conf

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

broker_url=
while [ $# -gt 0 ]; do
    case $1 in
        --broker-url) [ $# -ge 2 ] || die "--broker-url needs a URL"; broker_url=$2; shift 2 ;;
        --broker-url=*) broker_url=${1#*=}; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run me as root"
[ -d /run/systemd/system ] || die "systemd does not run this host (no /run/systemd/system)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "$PYTHON is missing or older than Python 3.10"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot create virtualenvs: apt-get install python3-venv"
if [ -n "$broker_url" ]; then
    "$PYTHON" -c 'import sys, urllib.parse; u = urllib.parse.urlsplit(sys.argv[1])
sys.exit(u.scheme not in ("amqp", "amqps") or u.password is not None)' "$broker_url" \
        || die "--broker-url must be amqp[s]://USER@HOST:PORT/VHOST, without the password" \
               "(that goes to $ETC/broker-password)"
fi

# 1. The program. A virtualenv made by another Python version (after a distribution upgrade) is
#    rebuilt rather than patched.
want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$PREFIX/bin/python" ]; then
    have=$("$PREFIX/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
    if [ "$have" != "$want" ]; then
        say "rebuilding $PREFIX (its Python is $have, $PYTHON is $want)"
        rm -rf "$PREFIX"
    fi
fi
if [ ! -x "$PREFIX/bin/python" ]; then
    say "creating the virtualenv $PREFIX with $PYTHON ($want)"
    "$PYTHON" -m venv "$PREFIX"
fi
pip="$PREFIX/bin/python -m pip --quiet --disable-pip-version-check --no-cache-dir"
if [ -d "$HERE/wheels" ]; then
    set -- "$HERE"/wheels/utilitarian-*.whl
    [ $# -eq 1 ] && [ -f "$1" ] || die "expected exactly one utilitarian wheel in $HERE/wheels"
    extras=$(cat "$HERE/EXTRAS" 2>/dev/null || true)
    say "installing $(basename "$1")${extras:+ [$extras]} and its dependencies from $HERE/wheels (offline)"
    $pip install --no-index --find-links "$HERE/wheels" --force-reinstall "$1${extras:+[$extras]}"
else
    say "installing from the source tree $HERE (dependencies from PyPI)"
    $pip install --upgrade "$HERE"
fi

# 2. The system user and its directories.
install -D -m 0644 "$HERE/systemd/sysusers.d/utilitarian.conf" "$LIBDIR/sysusers.d/utilitarian.conf"
install -D -m 0644 "$HERE/systemd/tmpfiles.d/utilitarian.conf" "$LIBDIR/tmpfiles.d/utilitarian.conf"
systemd-sysusers "$LIBDIR/sysusers.d/utilitarian.conf"

# 3. The configuration: written the first time only. The broker password file is root's; the
#    units get a copy through LoadCredential=.
install -d -m 0750 -o root -g utilitarian "$ETC"
if [ ! -e "$ETC/utilitarian.toml" ]; then
    say "writing $ETC/utilitarian.toml (edit it, then: utilitarian config check --connect)"
    tmp=$(mktemp)
    "$PREFIX/bin/python" - "$HERE/etc/utilitarian.server.toml" "$broker_url" >"$tmp" <<'PY'
import json, re, sys
text = open(sys.argv[1], encoding="utf-8").read()
if sys.argv[2]:  # a TOML basic string is a JSON string for any URL
    text = re.sub(r'(?m)^url = ".*"$', lambda m: "url = " + json.dumps(sys.argv[2]), text, count=1)
sys.stdout.write(text)
PY
    install -m 0640 -o root -g utilitarian "$tmp" "$ETC/utilitarian.toml"
    rm -f "$tmp"
else
    say "keeping $ETC/utilitarian.toml${broker_url:+ (--broker-url ignored)};" \
        "the current example is $PREFIX/share/doc/utilitarian/utilitarian.server.toml"
fi
if [ ! -e "$ETC/broker-password" ]; then
    install -m 0600 -o root -g root /dev/null "$ETC/broker-password"
fi
systemd-tmpfiles --create "$LIBDIR/tmpfiles.d/utilitarian.conf"

# 4. Units, the operator command, documentation.
install -d -m 0755 "$UNITDIR" "$UNITDIR/$(dirname "$MONTHLY_DROPIN")"
for unit in $UNITS; do
    install -m 0644 "$HERE/systemd/$unit" "$UNITDIR/$unit"
done
install -m 0644 "$HERE/systemd/$MONTHLY_DROPIN" "$UNITDIR/$MONTHLY_DROPIN"
install -D -m 0755 "$HERE/deploy/utilitarian-cli.sh" /usr/local/bin/utilitarian
doc=$PREFIX/share/doc/utilitarian
install -d -m 0755 "$doc"
install -m 0644 "$HERE/docs/operations.md" "$HERE/etc/utilitarian.toml" "$HERE/etc/utilitarian.server.toml" \
    "$HERE/systemd/examples/serial-meters.conf" "$doc/"
"$PREFIX/bin/python" -c 'import importlib.metadata as m; print(m.version("utilitarian"))' >"$doc/VERSION"
systemctl daemon-reload

say "utilitarian $(cat "$doc/VERSION") installed in $PREFIX; units in $UNITDIR"
# With a password in place (a re-install, an upgrade), ask the broker now rather than let the units
# fail later with 78; this never fails the install, which starts nothing.
if [ -s "$ETC/broker-password" ]; then
    if /usr/local/bin/utilitarian config check --connect --quiet; then
        say "the broker accepts $ETC/utilitarian.toml (utilitarian config check --connect)"
    else
        say "WARNING: utilitarian config check --connect failed (see above): fix it before starting the units"
    fi
else
    say "next: the broker password into $ETC/broker-password, then: utilitarian config check --connect"
fi
active=$(systemctl list-units --state=active --no-legend --plain 'utilitarian-worker@*' 'utilitarian-beat.service' \
    | wc -l)
if [ "$active" -gt 0 ]; then
    say "$active utilitarian units still run the old code: systemctl restart utilitarian.target"
fi
