#!/bin/sh
# psycopg 3.3.4's own test suite, direct vs through the gateway (session and transaction mode);
# prints the counts side by side. See scripts/psycopg_suite.py for options.
set -e
cd "$(dirname "$0")/.."
exec python3 scripts/psycopg_suite.py "$@"
