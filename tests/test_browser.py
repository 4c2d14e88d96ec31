"""The course in a real browser: `bash scripts/course.sh` started as the README says, driven with
Playwright in headless Chromium (Debian's /usr/bin/chromium; Playwright downloads no browser).

What is checked, in the page:
- the file browser, rooted at the repository, lists every chapter;
- chapter 00, with its solution cells filled in, runs to the end (Run > Run All Cells): every check
  prints PASS, nothing raises, and `show_progress()` shows chapter 00 done;
- chapter 02's circuit explorer and chapter 04's superposition sliders render, and changing a
  control changes what they show.

The course command runs from a copy of the repository's notebooks and scripts (the package is the
installed one), so the test writes nothing into the repository. Without Chromium or Playwright the
tests skip, unless DEMYSTIFY_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from utils.course import CHAPTERS as CHAPTER_RECORDS
from utils.notebook_setup import SETUP_CELL
from utils.paths import REPO

pytestmark = pytest.mark.slow  # scripts/test.sh --quick leaves these out

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("DEMYSTIFY_REQUIRE_BROWSER") == "1"
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the [dev] extra has it
    sync_playwright = None
if not (CHROMIUM.exists() and sync_playwright):
    if REQUIRED:
        raise RuntimeError("DEMYSTIFY_REQUIRE_BROWSER=1 but /usr/bin/chromium or playwright is missing")
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs Debian's chromium and the playwright package")]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WIDGETS_NOTEBOOK = [
    SETUP_CELL,
    "from utils import circuits\nfrom utils.models import load_model\n"
    "circuits.circuit_explorer(load_model('attn-only-1l', device='cpu'), source=' def')",
    "from utils import superposition as sp\nsp.explorer(steps=200, batch_size=128)",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The course command serving a copy of the course; yields (base URL, token, copy's root)."""
    root = tmp_path_factory.mktemp("course")
    for name in ("scripts", "chapters"):
        shutil.copytree(REPO / name, root / name)
    # Chapter 00 with its solution cells filled in, as a student who finished it has it.
    shutil.copyfile(REPO / "solutions" / "00_orientation" / "00_orientation.ipynb",
                    root / "chapters" / "00_orientation" / "00_orientation.ipynb")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in WIDGETS_NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / "chapters" / "widgets.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = root / ".jupyter-state"
    env = {**os.environ, "DEMYSTIFY_SKIP_SETUP": "1", "DEMYSTIFY_PROGRESS": str(root / "progress.json"),
           "JUPYTER_CONFIG_DIR": str(jupyter / "config"), "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(jupyter / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "ws"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(["bash", str(root / "scripts" / "course.sh"), "--no-browser", f"--port={port}",
                               f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if server.poll() is not None:
                raise AssertionError(f"the course command exited: {(root / 'lab.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
        yield base, token, root
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, course, path: str):
    base, token, _ = course
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    # A workspace of its own, so tabs another test opened are not restored beside this one.
    page.goto(f"{base}/lab/workspaces/{secrets.token_hex(4)}/tree/{path}?reset&token={token}")
    page.wait_for_selector(".jp-DirListing-content", state="attached")
    return page


def _run_all(page) -> None:
    """Run > Run All Cells, once the kernel is idle; then wait for every cell to finish."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached")
    page.wait_for_function("() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                           " return s && s.getAttribute('data-status') === 'idle'; }", timeout=120_000)
    started = ("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
               ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")
    for attempt in range(3):  # a Run All sent while the kernel is still connecting can be dropped
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(started, timeout=20_000)
            break
        except Exception:
            if attempt == 2:
                raise
    try:
        page.wait_for_function(
            "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);"
            " return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t)); }", timeout=240_000)
    except Exception:
        page.screenshot(path=os.path.join(os.environ.get("TMPDIR", "/tmp"), "demystify-browser-failure.png"),
                        full_page=True)
        raise


def _twice(flow) -> None:
    """Run a page flow; if it fails, say why and run it once more in a fresh page (a JupyterLab
    start-up race, such as a Run All sent while the kernel connects, should not fail CI; a real
    breakage fails both times). A failing Run All leaves a screenshot in $TMPDIR."""
    try:
        flow()
    except Exception as first:  # noqa: BLE001 - retried once, then raised
        print(f"browser flow failed once, retrying: {type(first).__name__}: {str(first)[:300]}")
        flow()


def test_file_browser_lists_every_chapter(browser, course):
    def flow():
        page = _open(browser, course, "chapters")
        page.wait_for_selector(".jp-DirListing-item[title*='00_orientation'], .jp-DirListing-itemText")
        names = page.locator(".jp-DirListing-itemText").all_inner_texts()
        slugs = sorted(p.name for p in (REPO / "chapters").glob("[0-9][0-9]_*") if p.is_dir())
        missing = [s for s in slugs if s not in names]
        assert slugs == [ch.slug for ch in CHAPTER_RECORDS]
        assert not missing, f"the file browser lists {names}; missing chapters {missing}"
        page.close()

    _twice(flow)


def test_chapter_00_runs_to_the_end_with_every_check_passing(browser, course):
    def flow():
        page = _open(browser, course, "chapters/00_orientation/00_orientation.ipynb")
        _run_all(page)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
                              ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count()
        text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
        assert errors == 0 and "Traceback" not in text, text[-3000:]
        nb = nbformat.read(REPO / "solutions" / "00_orientation" / "00_orientation.ipynb", as_version=4)
        n_checks = sum(1 for c in nb.cells if c.cell_type == "code" and "check." in c.source
                       and c.metadata.get("nbgrader", {}).get("grade"))
        assert text.count("PASS") >= n_checks > 0, text[-3000:]
        assert re.search(r"^00 .*all done", text, re.M), \
            f"show_progress() does not show chapter 00 done:\n{text[-2000:]}"
        progress = json.loads((course[2] / "progress.json").read_text())
        assert progress, "nothing was recorded in the progress file"
        page.close()

    _twice(flow)


def test_chapter_02_explorer_and_chapter_04_sliders_respond(browser, course):
    def flow():
        page = _open(browser, course, "chapters/widgets.ipynb")
        _run_all(page)
        view = page.locator(".widget-html-content").first
        view.wait_for()
        before = view.inner_text()
        page.locator(".widget-dropdown select").first.select_option(index=1)  # head 0 -> head 1
        page.wait_for_function("b => document.querySelector('.widget-html-content').innerText !== b", arg=before)
        assert view.inner_text() != before
        # Chapter 04: switch the output from ReLU to linear; the model retrains and the plot redraws.
        image = page.locator(".widget-output img").first
        image.wait_for(timeout=120_000)
        src = image.get_attribute("src")
        page.locator(".widget-toggle-button", has_text="linear").click()
        page.wait_for_function(
            "s => { const i = document.querySelector('.widget-output img'); return i && i.getAttribute('src') !== s; }",
            arg=src, timeout=120_000)
        page.close()

    _twice(flow)
