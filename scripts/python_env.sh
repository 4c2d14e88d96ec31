# Sourced by setup.sh, course.sh and test.sh: pick the Python the course installs into and runs.
#   - an activated virtual environment or conda environment is used as it is;
#   - otherwise a project virtual environment, .venv in the repository (DEMYSTIFY_VENV moves it), is
#     created on the first run and reused afterwards. This is what makes the commands work on a
#     system Python that refuses installs (PEP 668: Debian/Ubuntu's python3, Homebrew's python).
# Afterwards `python` on PATH is the chosen interpreter and DEMYSTIFY_PYTHON names it.
demystify_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  DEMYSTIFY_PYTHON="$(command -v python || command -v python3)"
  [ -n "${DEMYSTIFY_PYTHON_SHOWN:-}" ] || echo "demystify: using the active environment ($DEMYSTIFY_PYTHON)"
else
  venv="${DEMYSTIFY_VENV:-$demystify_repo/.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    base="${DEMYSTIFY_BASE_PYTHON:-$(command -v python3 || command -v python || true)}"
    if [ -z "$base" ]; then
      echo "demystify: no python3 found; install Python 3.10 or newer first" >&2
      exit 1
    fi
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "demystify: $base is Python $("$base" -c 'import platform; print(platform.python_version())'); the course needs 3.10 or newer" >&2
      exit 1
    fi
    echo "demystify: creating a virtual environment at $venv (from $base)"
    if ! "$base" -m venv "$venv"; then
      rm -rf "$venv"
      echo "demystify: '$base -m venv' failed. On Debian or Ubuntu: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  else
    echo "demystify: using the virtual environment at $venv"
  fi
  export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
  DEMYSTIFY_PYTHON="$venv/bin/python"
fi
export DEMYSTIFY_PYTHON DEMYSTIFY_PYTHON_SHOWN=1
