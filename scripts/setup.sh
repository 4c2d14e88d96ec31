#!/usr/bin/env bash
# Install the course into the active virtual environment or conda env, or else into the project's
# own .venv (created on the first run; see python_env.sh).
#   bash scripts/setup.sh          the student install: the package and JupyterLab ([course])
#   bash scripts/setup.sh dev      instructors and tests: adds nbgrader, pytest, Playwright ([dev])
# torch is installed first and on its own: the CPU build is enough for every chapter, and a plain
# `pip install torch` may pull gigabytes of CUDA libraries you do not need. A torch that is already
# installed (a GPU build, say) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-course}"
case "$extra" in course|dev) ;; *) echo "usage: bash scripts/setup.sh [course|dev]" >&2; exit 2 ;; esac
source scripts/python_env.sh
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install "torch==${DEMYSTIFY_TORCH_VERSION:-2.13.0}"
fi
torch_version="$(python -c 'import torch; print(torch.__version__)')"
# Pin the installed torch so nothing below replaces it.
python -m pip install -e ".[$extra]" -c scripts/constraints.txt -c <(echo "torch==$torch_version")
