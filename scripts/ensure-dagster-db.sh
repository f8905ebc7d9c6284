#!/usr/bin/env bash
# Create the Dagster instance database named in DAGSTER_PG_URL when it does not exist.
set -euo pipefail
url="${DAGSTER_PG_URL:?DAGSTER_PG_URL is not set}"
name="${url##*/}"; name="${name%%\?*}"
server="${url%/*}"; server="${server/postgresql+psycopg2:/postgresql:}"
if ! psql "$server/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
  psql "$server/postgres" -qc "CREATE DATABASE \"$name\""
  echo "created database $name for the Dagster instance"
fi
