#!/bin/sh
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): a database per party, and
# citybroker_reader, the role nodes read datasets through (`data` in deploy/config/node-*.toml):
# it can read every table and write none.
set -eu
reader_password=$(cat "$READER_PASSWORD_FILE")
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader_password="$reader_password" <<'SQL'
CREATE DATABASE aurora;
CREATE DATABASE borealis;
CREATE DATABASE cascadia;
CREATE DATABASE broker;
CREATE ROLE citybroker_reader LOGIN PASSWORD :'reader_password';
GRANT pg_read_all_data TO citybroker_reader;
SQL
