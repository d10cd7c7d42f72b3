#!/usr/bin/env bash
# Bootstraps .venv (first run only) and runs the test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh requirements-test.txt || exit 1
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests were collected"; exit 0; fi
exit "$rc"
