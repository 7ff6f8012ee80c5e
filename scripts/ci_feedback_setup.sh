#!/usr/bin/env bash
# Install and start what tests/feedback needs; idempotent, run as root.
#   - PostgreSQL from Debian's packages, listening on 127.0.0.1:5432, with a role and a
#     database for the tests: postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test
#   - Debian's Chromium (+ a font) for the Playwright browser test (no `playwright install`)
# Prints `export RLHFKIT_TEST_PG_URL=...` as its last line, so that
#   eval "$(bash scripts/ci_feedback_setup.sh | tail -n 1)"
# sets the variable for the tests. Network: Debian's package mirrors only.
set -euo pipefail
PG_URL="postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test"
log() { echo "[ci_feedback_setup] $*" >&2; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

PGVER=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PGVER main"; then
  log "creating cluster $PGVER/main"
  pg_createcluster "$PGVER" main --port 5432 >&2
fi
if ! pg_lsclusters -h | awk -v v="$PGVER" '$1==v && $2=="main" {print $4}' | grep -q online; then
  log "starting PostgreSQL $PGVER"
  pg_ctlcluster "$PGVER" main start >&2
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p 5432 >&2

psql_su() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\"" ; }
if [ "$(psql_su "SELECT 1 FROM pg_roles WHERE rolname='rlhfkit'")" != "1" ]; then
  psql_su "CREATE ROLE rlhfkit LOGIN PASSWORD 'rlhfkit'" >&2
fi
if [ "$(psql_su "SELECT 1 FROM pg_database WHERE datname='rlhfkit_test'")" != "1" ]; then
  psql_su "CREATE DATABASE rlhfkit_test OWNER rlhfkit" >&2
fi
log "PostgreSQL ready at $PG_URL; chromium: $(command -v chromium)"
echo "export RLHFKIT_TEST_PG_URL=$PG_URL"
