#!/usr/bin/env bash
# Make PostgreSQL and Redis reachable for the tests and benchmarks:
# start them when installed but stopped, install them from the OS packages when missing
# (root only), otherwise fail with a clear message. Safe to run again and again.
# `ensure-services.sh browser` only makes sure of what the dashboard's browser tests use
# (they call it when something is missing): Debian's headless `chromium`, and axe-core from
# the npm registry (pinned below) under .data/axe, with Node.js from Debian when needed.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-$(id -un)}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" "$2" && return 0; sleep 0.5; done
  return 1
}
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  is_root && command -v apt-get >/dev/null || return 1
  say "installing $* from the OS packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_clusters() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then return 0; fi
  local fresh=0
  if [ -z "$(pg_clusters)" ]; then
    apt_install postgresql || die "PostgreSQL is not installed and I cannot install it (need root and apt-get); start one on $PG_HOST:$PG_PORT"
    fresh=1
  fi
  local version; version=$(pg_clusters)
  say "starting PostgreSQL $version"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_port "$PG_HOST" "$PG_PORT" || die "PostgreSQL did not open $PG_HOST:$PG_PORT (see /var/log/postgresql/)"
  if [ "$fresh" = 1 ]; then
    # A fresh test machine: trust loopback connections, as the CI machines do.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
}

ensure_pg_role() {
  if command -v psql >/dev/null && ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    if is_root && command -v runuser >/dev/null; then
      say "creating PostgreSQL role $PG_USER"
      runuser -u postgres -- psql -q -c "CREATE ROLE \"$PG_USER\" SUPERUSER LOGIN" >/dev/null 2>&1 || true
    fi
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 \
      || die "cannot log in to PostgreSQL as '$PG_USER' on $PG_HOST:$PG_PORT (role or pg_hba.conf trust missing)"
  fi
}

ensure_redis() {
  if port_open "$REDIS_HOST" "$REDIS_PORT"; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server || die "Redis is not installed and I cannot install it (need root and apt-get); start one on $REDIS_HOST:$REDIS_PORT"
  fi
  say "starting Redis"
  local dir=/var/lib/redis; [ -w "$dir" ] || dir=$(mktemp -d)
  local log=/var/log/redis/ci.log; [ -w "$(dirname "$log")" ] || log="$dir/redis.log"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$dir" --logfile "$log" >/dev/null
  wait_port "$REDIS_HOST" "$REDIS_PORT" || die "Redis did not open $REDIS_HOST:$REDIS_PORT (see $log)"
}

ensure_chromium() {
  if command -v chromium >/dev/null; then return 0; fi
  apt_install chromium || die "chromium is not installed and I cannot install it (need root and apt-get); install Debian's 'chromium' package"
  command -v chromium >/dev/null || die "installing chromium did not put 'chromium' on PATH"
}

AXE_VERSION=4.14.1
AXE_DIR=${AXE_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.data/axe}
ensure_axe() {
  local js="$AXE_DIR/node_modules/axe-core/axe.min.js"
  if [ -s "$js" ] && grep -q "\"version\": \"$AXE_VERSION\"" "$AXE_DIR/node_modules/axe-core/package.json"; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    apt_install nodejs npm || die "npm is not installed and I cannot install it (need root and apt-get); install Debian's 'npm' package"
  fi
  say "installing axe-core $AXE_VERSION from the npm registry into $AXE_DIR"
  mkdir -p "$AXE_DIR"
  npm install --silent --no-audit --no-fund --no-save --prefix "$AXE_DIR" "axe-core@$AXE_VERSION" >&2 \
    || die "npm could not install axe-core@$AXE_VERSION"
  [ -s "$js" ] || die "installing axe-core did not leave $js"
}

if [ "${1:-}" = browser ] || [ "${1:-}" = chromium ]; then
  ensure_chromium
  ensure_axe
  exit 0
fi

ensure_postgres
ensure_pg_role
ensure_redis
ensure_chromium
ensure_axe
say "PostgreSQL $PG_HOST:$PG_PORT and Redis $REDIS_HOST:$REDIS_PORT are up"
