#!/usr/bin/env bash
# The state benchmark: first sync, unchanged re-sync, and 1% changed + 1% deleted, on a
# 10,000-object bucket of the in-process S3 server, with SQLite and with PostgreSQL
# (127.0.0.1:5432, or INGESTD_TEST_POSTGRES). scripts/test.sh starts PostgreSQL when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench state
