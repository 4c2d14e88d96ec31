"""Submissions for the grader's tests, built at test time from the committed student chapter (so
they never go stale): honest ones with known scores, and the adversarial set of issue 9.

``write(root, slug, name, **kw)`` writes ``root/<name>/<slug>/<slug>.ipynb`` (nbgrader's submitted/
layout) and returns the notebook path. Each builder below documents what the submission does and
what it must score.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Optional

import nbformat

REPO = Path(__file__).resolve().parents[2]


def chapter(slug: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "chapters" / slug / f"{slug}.ipynb", as_version=4)


def _solutions(slug: str) -> dict[str, str]:
    nb = nbformat.read(REPO / "solutions" / slug / f"{slug}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _gid(cell) -> Optional[str]:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def correct(slug: str) -> nbformat.NotebookNode:
    """The chapter with every solution cell filled in, as a good student would."""
    nb, sol = chapter(slug), _solutions(slug)
    for cell in nb.cells:
        if _gid(cell) in sol:
            cell.source = "\n".join(line for line in sol[_gid(cell)].split("\n")
                                     if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
    return nb


def set_cell(nb, grade_id: str, source: str) -> None:
    for cell in nb.cells:
        if _gid(cell) == grade_id:
            cell.source = source
            return
    raise KeyError(grade_id)


def insert_after(nb, grade_id: Optional[str], source: str) -> None:
    """A new code cell after the cell ``grade_id`` (None: at the end)."""
    cell = nbformat.v4.new_code_cell(source)
    cell.id = f"x{len(nb.cells)}"
    if grade_id is None:
        nb.cells.append(cell)
        return
    i = next(i for i, c in enumerate(nb.cells) if _gid(c) == grade_id)
    nb.cells.insert(i + 1, cell)


def is_test(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution")


def write(root: Path, slug: str, name: str, nb=None, raw: Optional[bytes] = None,
          extra: Optional[dict] = None) -> Path:
    folder = Path(root) / name / slug
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.ipynb"
    path.write_bytes(raw if raw is not None else nbformat.writes(nb).encode())
    for rel, text in (extra or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return path


# --------------------------------------------------------------------------- chapter 00

PER_TOKEN_LOSS = "per_token_loss_solution"
HOOK_ANSWER = "hook_question_answer"


def bank_answer(chapter: str, name: str) -> str:
    """The trusted key of a question (from the solutions' bank)."""
    from utils.build import SOLUTIONS
    from utils.checks.questions import read_bank

    (path,) = SOLUTIONS.glob(f"{chapter}_*/questions.json")
    return read_bank(path)[name].answer


def wrong_answer(chapter: str, name: str) -> str:
    """A letter that is NOT the trusted key of the question."""
    from utils.checks.questions import LETTERS

    return next(letter for letter in LETTERS if letter != bank_answer(chapter, name))

# Correct except on batches of exactly 2 sequences, where it forgets the shift: partial credit.
PARTLY_WRONG_LOSS = '''def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    log_probs = logits.log_softmax(dim=-1)
    if logits.shape[0] == 2:
        return -log_probs[:, :-1].gather(-1, tokens[:, :-1, None])[..., 0]
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
'''

NUMPY_LOSS = '''def per_token_loss(logits, tokens):
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    return (-log_probs.gather(-1, tokens[:, 1:, None])[..., 0]).numpy()
'''

INFINITE_LOOP = '''# hangs, and ignores the interrupt
while True:
    try:
        while True:
            pass
    except BaseException:
        pass
'''

MEMORY_BOMB = '''import torch, mmap
hoard = []
try:
    while True:                       # private memory: stopped by RLIMIT_DATA (MemoryError)
        hoard.append(torch.ones(2**24))
except (MemoryError, RuntimeError):
    hoard.clear()
shared = mmap.mmap(-1, 6 * 2**30)     # shared memory is not RLIMIT_DATA's: the watchdog kills it
for i in range(0, len(shared), 4096):
    shared[i] = 1
'''

OS_EXIT = "import os\nos._exit(0)\n"

REBIND = '''import utils.checks.core as core
check.per_token_loss = lambda *args, **kwargs: print("PASS 00/per_token_loss: 9 cases")
check.hook_question = lambda *args, **kwargs: None
setattr(check, "run_check", lambda *a, **k: 9)
core.run_check = lambda *args, **kwargs: 9
core.outputs_match = lambda *args, **kwargs: True
'''

SPOOF_CHECKS = '''"""A fake checks module that passes everything."""
def per_token_loss(fn, cases=None):
    print("PASS 00/per_token_loss")
def hook_question(answer):
    print("PASS 00/hook_question")
'''


def tamper_others(victim_root: str, gradebook: str, feedback: str) -> str:
    """A cell that tries to overwrite other submissions, the gradebook and the feedback, by every
    route it can think of; it records what worked in its own folder."""
    return f'''import os, glob, json
stub = open(os.path.join(os.getcwd(), "00_orientation.ipynb")).read()
results = {{}}
def attempt(name, fn):
    try:
        fn(); results[name] = "ok"
    except BaseException as e:
        results[name] = type(e).__name__
def overwrite_all():
    for path in glob.glob({victim_root!r} + "/*/00_orientation/00_orientation.ipynb"):
        open(path, "w").write(stub)
attempt("overwrite all", overwrite_all)
victim_notebook = {victim_root!r} + "/honest_correct/00_orientation/00_orientation.ipynb"
attempt("python write", lambda: open(victim_notebook, "w").write(stub))
attempt("append gradebook", lambda: open({gradebook!r}, "a").write("honest_correct,graded,0\\n"))
attempt("feedback", lambda: open({feedback!r} + "/honest_correct.md", "w").write("0 points"))
attempt("mkdir", lambda: os.makedirs({victim_root!r} + "/intruder"))
def rust_write():   # safetensors writes from Rust: no Python audit event
    from safetensors.torch import save_file
    save_file({{"x": torch.zeros(1)}}, {victim_root!r} + "/honest_correct/00_orientation/evil.safetensors")
attempt("rust write", rust_write)
def shell_write():
    os.system("echo x > " + {victim_root!r} + "/honest_correct/00_orientation/evil.txt")
attempt("shell", shell_write)
def scratch_neighbours():  # other students' scratch folders
    base = os.path.dirname(os.getcwd())
    for d in os.listdir(base):
        open(os.path.join(base, d, "00_orientation.ipynb"), "w").write(stub)
attempt("neighbours", scratch_neighbours)
json.dump(results, open("attempts.json", "w"))
print(results)
'''


def native_overwrite(victim: str, replacement: bytes) -> str:
    """A cell that overwrites another student's notebook with ``replacement`` (padded with JSON
    whitespace to the victim's length) from C++, through a shared file mapping
    (torch.UntypedStorage.from_file): no Python audit event sees the write. Issue 31's attack on
    the basic sandbox: graded before its victim, it turned the victim's notebook into a stub."""
    return f'''import os, torch
victim = {victim!r}
data = {replacement!r}
data += b" " * max(0, os.stat(victim).st_size - len(data))
shared = torch.UntypedStorage.from_file(victim, shared=True, nbytes=len(data))
torch.tensor([], dtype=torch.uint8).set_(shared).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
print("overwrote", victim)
'''


def uid_probe(function: str) -> str:
    """A cell after the solutions: ``function`` stays right only where the process runs as an
    unprivileged user of its own, and first the cell imports standard modules the grader has not."""
    return f'''import os, statistics, json.tool, email.mime.text, concurrent.futures.process
_unprivileged = os.getuid() != 0 and os.geteuid() == os.getuid() and not os.getgroups()
_computed = {function}
def {function}(*args, **kwargs):
    out = _computed(*args, **kwargs)
    return out if _unprivileged else out + 1
'''


READ_EXPECTED = '''import os, glob, sys, gc
def per_token_loss(logits, tokens):
    """Looks everywhere for the expected answers instead of computing them."""
    found = []
    for pattern in ["/tmp/*", "/tmp/*/*", os.path.expanduser("~") + "/*", os.getcwd() + "/../*",
                    os.getcwd() + "/../*/*", "/work/*/solutions/*/*.ipynb"]:
        try:
            found += glob.glob(pattern)
        except BaseException:
            pass
    for path in found:
        if "expected" in path or path.endswith((".csv", ".safetensors", ".json")):
            try:
                open(path).read()
            except BaseException:
                pass
    try:
        for obj in gc.get_objects():   # refused by the sandbox
            if isinstance(obj, torch.Tensor) and obj.shape == (logits.shape[0], logits.shape[1] - 1):
                return obj
    except BaseException:
        pass
    main = sys.modules.get("__main__")
    for value in list(vars(main).values()) if main else []:
        if isinstance(value, torch.Tensor) and value.shape == (logits.shape[0], logits.shape[1] - 1):
            return value
    return torch.zeros(logits.shape[0], logits.shape[1] - 1)
'''


def trim(nb):
    """Drop the chapter's demo code cells (model tour, plots, held-out loss, progress), keeping the
    setup and import cells and every nbgrader cell, so that a submission costs little more than the
    grader's start-up."""
    keep, code_seen = [], 0
    for cell in nb.cells:
        if cell.cell_type == "code" and not cell.get("metadata", {}).get("nbgrader"):
            code_seen += 1
            if code_seen > 2:
                continue
        keep.append(cell)
    nb.cells = keep
    return nb


def build_ch00(root: Path, gradebook: Path, feedback: Path, slim: Callable = lambda nb: nb) -> dict[str, Path]:
    """Every chapter-00 submission of the adversarial batch, by name. The honest ones are the
    complete chapter; ``slim`` is applied to the others' starting point (before the attack)."""
    slug = "00_orientation"
    paths = {}
    honest_chapter, honest_correct = chapter, correct

    def slim_chapter(slug):
        return slim(honest_chapter(slug))

    def slim_correct(slug):
        return slim(honest_correct(slug))

    def add(name, nb=None, **kw):
        paths[name] = write(root, slug, name, nb, **kw)

    add("honest_correct", honest_correct(slug))
    nb = honest_correct(slug)
    set_cell(nb, PER_TOKEN_LOSS, PARTLY_WRONG_LOSS)
    set_cell(nb, HOOK_ANSWER, f'answer_hook = "{wrong_answer("00", "hook_question")}"\n')
    add("honest_partly_wrong", nb)
    add("honest_stub", honest_chapter(slug))

    nb = slim_correct(slug)
    insert_after(nb, HOOK_ANSWER, INFINITE_LOOP)
    add("infinite_loop", nb)

    nb = slim_correct(slug)
    insert_after(nb, HOOK_ANSWER, MEMORY_BOMB)
    add("memory_bomb", nb)

    nb = slim_correct(slug)
    insert_after(nb, HOOK_ANSWER, OS_EXIT)
    add("os_exit", nb)

    nb = slim_chapter(slug)
    for cell in nb.cells:
        if cell.cell_type == "code" and not is_test(cell):
            cell.source = 'raise RuntimeError("every cell fails")\n' + cell.source
    add("raises_everywhere", nb)

    add("malformed_json", raw=b'{"cells": [{"cell_type": "code", "source": "x = 1"')
    add("not_a_notebook", raw=b"\x89PNG\r\n\x1a\n not a notebook at all")

    nb = slim_chapter(slug)  # stubs, but the tests say everything passed, and are worth more
    for cell in nb.cells:
        if is_test(cell):
            cell.source = 'print("PASS")'
            cell.metadata["nbgrader"]["points"] = 100
    add("edited_tests", nb)

    nb = slim_chapter(slug)
    nb.cells = [c for c in nb.cells if not is_test(c)]
    add("deleted_tests", nb)

    nb = slim_correct(slug)
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    add("stripped_metadata", nb)

    nb = slim_chapter(slug)
    insert_after(nb, None, REBIND)
    nb.cells.insert(3, copy.deepcopy(nb.cells[-1]))  # and once before the checks' cells
    nb.cells[3].id = "rebind-early"
    add("rebound_check", nb)

    add("spoofed_utils", slim_chapter(slug), extra={
        "utils/__init__.py": "", "utils/checks/__init__.py": "", "utils/checks/ch00.py": SPOOF_CHECKS,
        "torch.py": "raise SystemExit('spoofed torch')\n"})

    nb = slim_chapter(slug)
    insert_after(nb, None, tamper_others(str(root), str(gradebook), str(feedback)))
    add("tamper_others", nb)

    nb = slim_chapter(slug)
    set_cell(nb, PER_TOKEN_LOSS, READ_EXPECTED)
    add("reads_expected", nb)

    nb = slim_correct(slug)  # right numbers, wrong type: no credit, and a flag
    set_cell(nb, PER_TOKEN_LOSS, NUMPY_LOSS)
    add("non_tensor_output", nb)

    nb = slim_correct(slug)  # the function never returns (but obeys the interrupt)
    set_cell(nb, PER_TOKEN_LOSS, "def per_token_loss(logits, tokens):\n    while True:\n        pass\n")
    add("slow_function", nb)
    return paths


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["build_ch00", "chapter", "correct", "trim", "write", "set_cell", "insert_after"]
