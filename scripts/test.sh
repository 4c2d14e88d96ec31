#!/usr/bin/env bash
# Set up and run every test: references vs oracles, checks vs wrong code, chapters in sync with
# solutions, notebooks executing, the linter. Offline; one torch thread per process keeps timings
# stable, and the tests run in parallel on every core (pytest-xdist).
#   bash scripts/test.sh            the full suite, as CI runs it (installs first)
#   bash scripts/test.sh --quick    no install, no tests marked slow (notebooks, browser, installs,
#                                   sandboxed grading, training): minutes, for course authors
# Other arguments go to pytest, e.g. `bash scripts/test.sh --quick tests/test_ch03_copying.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
source scripts/python_env.sh
if [ "$quick" = 0 ]; then
  bash scripts/setup.sh dev
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
python -m ruff check --quiet .
python -m utils.build --check
workers="${DEMYSTIFY_TEST_WORKERS:-auto}"
status=0
if [ "$quick" = 1 ]; then
  python -m pytest -q -n "$workers" -m "not slow" "$@" || status=$?
else
  python -m pytest -q -n "$workers" "$@" || status=$?
fi
echo "scripts/test.sh: $([ "$quick" = 1 ] && echo quick || echo full) run finished in $(( $(date +%s) - start )) s"
exit "$status"
