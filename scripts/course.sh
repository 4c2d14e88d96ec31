#!/usr/bin/env bash
# Set up the course and open it in JupyterLab: the whole repository in the file browser, chapter 00
# open. Extra options go to JupyterLab, e.g. on a server:
#   bash scripts/course.sh --no-browser --port 8890
# It installs into the active virtual environment or conda env, or else into the project's .venv
# (created on the first run, reused after; see scripts/python_env.sh).
# DEMYSTIFY_SKIP_SETUP=1 skips the install (it is quick when everything is installed already).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh
if [ "${DEMYSTIFY_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh course
fi
args=("--ServerApp.root_dir=$PWD")
if [ "$(id -u)" = 0 ]; then
  args+=(--allow-root)  # containers and cloud VMs often run as root; Jupyter refuses without it
fi
exec python -m jupyterlab "${args[@]}" "$@" chapters/00_orientation/00_orientation.ipynb
