"""The one setup cell every notebook starts with; the repository URL lives only here.

``utils.build`` and tests/test_notebooks.py keep the first cell of every solution notebook equal
to SETUP_CELL, so changing the URL here and rebuilding updates the whole course.
"""
# The course's repository; notebooks read DEMYSTIFY_REPO_URL first, so a fork can install itself.
REPO_URL = "https://github.com/demystify-course/demystify"

SETUP_CELL = f'''# Setup: run this cell first. In Colab it installs the course package; locally it only checks it.
import os, subprocess, sys

REPO_URL = os.environ.get("DEMYSTIFY_REPO_URL", "{REPO_URL}")
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    import torch  # Colab's own build (with CUDA): pinned below so that pip never replaces it
    with open("/tmp/demystify-torch.txt", "w") as pin:
        pin.write(f"torch=={{torch.__version__}}\\n")
    # A clone: the package to install, and the chapters' question banks for the self-checks.
    COURSE = os.environ.get("DEMYSTIFY_COURSE", "/content/demystify")
    if not os.path.isdir(COURSE):
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, COURSE], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/demystify-torch.txt", COURSE],
                   check=True)
    os.environ["DEMYSTIFY_COURSE"] = COURSE
try:
    import utils
except ImportError as exc:
    raise ImportError("The course package is not installed: from the repository root run "
                      "`bash scripts/setup.sh` (see README.md), then restart the kernel.") from exc
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"demystify {{utils.__version__}}, torch {{torch.__version__}}, device: {{device}}")'''
