#!/usr/bin/env bash
# Set up and run every test: references vs oracles, checks vs wrong code, chapters in sync with
# solutions, notebooks executing. Offline; one torch thread per process keeps timings stable.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
python -m utils.build --check
python -m pytest -q "$@"
