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
    import time

    started = time.time()
    # Colab's packages stay as they are (its CUDA torch, ipywidgets 7, ...): everything installed
    # is pinned at its version, so pip only adds what is missing. No kernel restart is needed.
    pins = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"],
                          capture_output=True, text=True, check=True).stdout
    with open("/tmp/demystify-runtime.txt", "w") as file:
        file.write("\\n".join(line for line in pins.splitlines() if "==" in line) + "\\n")
    # A clone: the package to install, and the chapters' question banks for the self-checks.
    COURSE = os.environ.get("DEMYSTIFY_COURSE", "/content/demystify")
    if not os.path.isdir(COURSE):
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, COURSE], check=True)
    install = [sys.executable, "-m", "pip", "install", "-q", COURSE, "-c", "/tmp/demystify-runtime.txt"]
    if subprocess.run(install).returncode != 0:
        print("A package of this runtime is older than the course needs: installing with only torch kept.")
        import torch  # Colab's own build (with CUDA), never replaced
        with open("/tmp/demystify-runtime.txt", "w") as file:
            file.write(f"torch=={{torch.__version__}}\\n")
        subprocess.run(install, check=True)
    os.environ["DEMYSTIFY_COURSE"] = COURSE
    import ipywidgets
    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        from google.colab import output
        output.enable_custom_widget_manager()  # Colab shows ipywidgets 8 only through it
    print(f"course installed in {{time.time() - started:.0f}} s")
try:
    import utils
except ImportError as exc:
    raise ImportError("The course package is not installed: from the repository root run "
                      "`bash scripts/setup.sh` (see README.md), then restart the kernel.") from exc
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"demystify {{utils.__version__}}, torch {{torch.__version__}}, device: {{device}}")'''
