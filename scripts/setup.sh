#!/usr/bin/env bash
# Install the course into the current Python (use a virtual environment or conda env if you like).
# torch is installed first and on its own: the CPU build is enough for every chapter, and a plain
# `pip install torch` may pull gigabytes of CUDA libraries you do not need.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==${DEMYSTIFY_TORCH_VERSION:-2.13.0}"
python -m pip install -e ".[dev]" -c scripts/constraints.txt
