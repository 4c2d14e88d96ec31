#!/usr/bin/env bash
# Set up and open the course in JupyterLab, starting at chapter 00.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python -m jupyterlab chapters/00_orientation/00_orientation.ipynb
