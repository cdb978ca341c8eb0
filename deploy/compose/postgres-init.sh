#!/bin/sh
# Run once by the postgres image on an empty data directory: crmflow's own role and
# database beside Temporal's (auto-setup creates `temporal` and `temporal_visibility`).
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$CRMFLOW_DB_PASSWORD" --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE ROLE crmflow LOGIN PASSWORD :'pw';
CREATE DATABASE crmflow OWNER crmflow;
SQL
