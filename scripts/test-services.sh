#!/usr/bin/env bash
# The services the control-plane tests use, installed and started: PostgreSQL with role `keyless`
# (password `keyless`) owning database `keyless_test` on 127.0.0.1:5432, and Debian's Chromium.
# `make unit` runs this before pytest. It is idempotent and takes a few seconds once set up.
#
# As root with apt-get (CI, the project's machines) it installs what is missing from Debian's
# packages and starts PostgreSQL. Otherwise it only checks: it says what is missing and how to get
# it, and fails only when something is.
#
# Environment: KEYLESS_TEST_POSTGRES_URL and KEYLESS_TEST_CHROMIUM (as pytest gets them; defaults
# below), KEYLESS_PYTHON (an interpreter with psycopg, for the connection check; default .venv's).
set -euo pipefail

cd "$(dirname "$0")/.."

PG_PORT=5432
PG_ROLE=keyless
PG_PASSWORD=keyless
PG_DATABASE=keyless_test
POSTGRES_URL="${KEYLESS_TEST_POSTGRES_URL:-postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE}"
CHROMIUM="${KEYLESS_TEST_CHROMIUM:-/usr/bin/chromium}"
PYTHON="${KEYLESS_PYTHON:-.venv/bin/python}"
[[ -x $PYTHON ]] || PYTHON=python3

log() { echo "test-services: $*"; }
fail() {
  echo "test-services: error: $*" >&2
  exit 1
}

# Command output goes here, and is shown only when a step fails.
LOG="$(mktemp -t keyless-test-services.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
show_log() { tail -n 40 "$LOG" | sed 's/^/  | /' >&2; }

have_postgres() { command -v pg_lsclusters >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
have_chromium() { [[ -x $CHROMIUM ]]; }

# Connects the way the tests do (TCP, password) and runs a query; prints the error on failure.
db_check() {
  "$PYTHON" - "$POSTGRES_URL" <<'EOF'
import sys

try:
    import psycopg
except ImportError as exc:
    sys.exit(f"{exc} (make creates .venv with it; or set KEYLESS_PYTHON)")
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://", 1)
try:
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
except psycopg.Error as exc:
    sys.exit(str(exc).strip())
EOF
}

# Not root, or no apt-get: check only, and say how to get what is missing.
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
  missing=0
  if ! have_chromium; then
    log "missing: Chromium at $CHROMIUM. Install it: sudo apt-get install --no-install-recommends chromium"
    missing=1
  fi
  if ! error="$(db_check 2>&1)"; then
    log "missing: PostgreSQL at $POSTGRES_URL ($error)."
    log "  Run this script as root (sudo $0) to install and set it up, or by hand:"
    log "  sudo apt-get install postgresql && sudo pg_ctlcluster <version> main start, then as postgres:"
    log "  CREATE ROLE $PG_ROLE LOGIN PASSWORD '$PG_PASSWORD'; CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE;"
    missing=1
  fi
  ((missing)) || log "ready: PostgreSQL ($POSTGRES_URL), Chromium ($CHROMIUM); not root, so nothing was installed or started"
  exit "$missing"
fi

# 1. Install what is missing from Debian's packages (apt-get update only then).
packages=()
have_postgres || packages+=(postgresql)
have_chromium || packages+=(chromium)
if ((${#packages[@]})); then
  log "installing ${packages[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  # C.UTF-8 exists on every Debian: the cluster that postgresql's install creates gets UTF-8, not SQL_ASCII.
  if ! { apt-get update -q && LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get install -y -q --no-install-recommends "${packages[@]}"; } \
    >"$LOG" 2>&1; then
    show_log
    fail "apt-get could not install ${packages[*]}"
  fi
  have_chromium || fail "Chromium is not at $CHROMIUM after installing it (KEYLESS_TEST_CHROMIUM names another path?)"
  if [[ " ${packages[*]} " == *" chromium "* ]]; then
    # A fresh install: check that it really starts headless (as root it needs --no-sandbox).
    dom="$(timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --dump-dom \
      'data:text/html,<title>keyless-ok</title>' 2>"$LOG")" || true
    if [[ $dom != *'<title>keyless-ok</title>'* ]]; then
      show_log
      fail "$CHROMIUM was installed but does not start headless"
    fi
  fi
fi

# 2. Start the PostgreSQL cluster on $PG_PORT; create one if there is none at all.
cluster="$(pg_lsclusters --no-header | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }')"
if [[ -z $cluster ]]; then
  if [[ -n "$(pg_lsclusters --no-header)" ]]; then
    pg_lsclusters >&2
    fail "no PostgreSQL cluster listens on port $PG_PORT (see above); the tests expect one there"
  fi
  version="$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sed -E 's#^/usr/lib/postgresql/([^/]+)/.*#\1#' | sort -V | tail -n 1)"
  log "creating PostgreSQL $version cluster main on port $PG_PORT"
  LANG=C.UTF-8 LC_ALL=C.UTF-8 pg_createcluster --port "$PG_PORT" "$version" main >"$LOG" 2>&1 || {
    show_log
    fail "pg_createcluster $version main failed"
  }
  cluster="$version main down"
fi
read -r version name status <<<"$cluster"
if [[ $status != online* ]]; then
  log "starting PostgreSQL $version/$name"
  pg_ctlcluster "$version" "$name" start >"$LOG" 2>&1 || {
    show_log
    fail "pg_ctlcluster $version $name start failed (log: /var/log/postgresql/postgresql-$version-$name.log)"
  }
fi

# 3. Wait until it accepts connections.
for _ in $(seq 60); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || fail "PostgreSQL $version/$name does not accept connections on 127.0.0.1:$PG_PORT"

# 4. The role and the database, created once; password, rights and owner reset every run.
# (cd /: psql runs as postgres, which may not be allowed into the work tree.)
if ! (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres) >"$LOG" 2>&1 <<EOF; then
SELECT 'CREATE ROLE $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') \gexec
ALTER ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE ENCODING ''UTF8'' LC_COLLATE ''C.UTF-8'' LC_CTYPE ''C.UTF-8'' TEMPLATE template0'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE') \gexec
ALTER DATABASE $PG_DATABASE OWNER TO $PG_ROLE;
EOF
  show_log
  fail "could not create role $PG_ROLE and database $PG_DATABASE"
fi

# 5. Connect as the tests will.
error="$(db_check 2>&1)" || fail "cannot connect to $POSTGRES_URL: $error"
log "ready: PostgreSQL $version/$name ($POSTGRES_URL), Chromium ($CHROMIUM)"
