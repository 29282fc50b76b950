#!/bin/sh
# Build the release bundle dist/utilitarian-<version>.tar.gz: wheels of utilitarian and of every
# dependency (so the server installs offline), the units, the example configuration, the deploy
# scripts and docs/operations.md. Run it where PyPI is reachable, with the Python version and
# architecture of the servers (Debian 12: 3.11, Ubuntu 22.04: 3.10, 24.04: 3.12), e.g. on one of them.
#   deploy/bundle.sh [OUTDIR]        PYTHON=python3.11 deploy/bundle.sh
# EXTRAS=postgres adds the PostgreSQL driver, EXTRAS=dlms the AES-GCM library for secured DLMS (EXTRAS=postgres,dlms for both); install.sh installs whatever extras the bundle names.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$SRC/dist}
PYTHON=${PYTHON:-python3}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$SRC/pyproject.toml" | head -n 1)
[ -n "$version" ] || { echo "bundle.sh: no version in $SRC/pyproject.toml" >&2; exit 1; }
name=utilitarian-$version
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build from a copy so the source tree (perhaps read-only) gets no build/ or egg-info.
mkdir -p "$work/src" "$work/$name/wheels"
cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/utilitarian" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip --quiet --disable-pip-version-check wheel --wheel-dir "$work/$name/wheels" \
    "$work/src${EXTRAS:+[$EXTRAS]}"

for dir in deploy systemd etc docs; do mkdir -p "$work/$name/$dir"; done
cp "$SRC"/deploy/install.sh "$SRC"/deploy/upgrade.sh "$SRC"/deploy/uninstall.sh "$SRC"/deploy/utilitarian-cli.sh \
    "$work/$name/deploy/"
cp -R "$SRC"/systemd/. "$work/$name/systemd/"
cp "$SRC"/etc/utilitarian.toml "$SRC"/etc/utilitarian.server.toml "$work/$name/etc/"
cp "$SRC"/docs/operations.md "$work/$name/docs/"
echo "$version" >"$work/$name/VERSION"
echo "${EXTRAS:-}" >"$work/$name/EXTRAS"
mkdir -p "$OUT"
tar -C "$work" -czf "$OUT/$name.tar.gz" "$name"
echo "$OUT/$name.tar.gz"
