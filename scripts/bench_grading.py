"""Benchmark the sandboxed grader: a batch of chapter-00 submissions, serial vs parallel.

    python scripts/bench_grading.py [--n 20] [--jobs 1 2] [--sandbox auto] [--chapter 00]

Prints, per --jobs setting, the batch's wall time (start-up included: planning the chapter and the
zygote's imports, which overlap) and, per submission, the grader's overhead beyond the
submission's own execution:

* own execution, in the batch: the time the submission's process spent in its cells and in the
  calls of its functions (measured inside that process);
* overhead, in the batch: wall time per submission (fork, sandbox set-up, feeding, watching,
  scoring in the grader) minus its own execution, plus the batch's start-up divided by N;
* baseline: the same notebooks run the plain way, each in a fresh Python process (imports
  included, as a kernel would), without any grader, to compare the totals.

The submissions: 60% correct, 20% partly wrong, 20% unmodified stubs, all complete notebooks of
the chapter (its demos included), as students would hand them in; partly wrong is, in chapter 00,
a loss that forgets the shift on batches of two, in the others the first exercise left undone.
With ``--sandbox basic`` as root each submission runs as an unprivileged user, as the grader's
command does (utils/grading/privileges.py).

Measured (issue 31, 2 shared CPU cores, namespace sandbox, --n 20, --jobs 1):
* before the caller-independent tripwire (commit 89593fc, load average 1.7): overhead 0.29 s mean
  (0.39 s max), 0.54 s with the start-up shared out; own execution 2.59 s mean;
* after it (commit 3644524, load average 3.2, everything about 1.3x slower): overhead 0.38 s mean
  (0.46 s max), 0.75 s with the start-up shared out; own execution 3.28 s mean; --jobs 2: 0.40 s.
  The overhead stays about 11% of the submission's own execution, as before. Installing the
  tripwire in each submission's process, measured alone: chapter 00 about 40 ms, chapter 03 about
  65 ms (it was about 1.2 s before the one-scan swap).
* at the end of issue 31 (commit after bb81a36, as root, load average 9 to 11 from other work on
  the 2 cores, so everything about 3x slower than above; chapter 00 could not be graded at that
  moment, see the issue's note), chapter 01, --n 10, --jobs 1: namespace sandbox overhead 1.37 s
  mean (1.65 s max), 3.03 s with the start-up shared out, own execution 4.87 s; basic sandbox, each
  submission as an unprivileged user, 1.13 s mean (1.35 s max), 2.89 s shared, own execution
  4.31 s. Chapter 01 has nine graded exercises to score (chapter 00 had two). Becoming the
  unprivileged user, measured alone: about 45 ms per submission under that load.
* re-measured on a nearly idle machine (2026-12-04, load average 0.2-1.1, namespace sandbox, as
  root, --n 20; chapter 00 now has its hook exercises, so its own execution is longer): --jobs 1
  81.2 s in all (3.2 s start-up), own execution 3.67 s mean, overhead 0.23 s mean (0.25 s max),
  0.40 s with the start-up shared out; --jobs 2 43.6 s in all, own execution 3.72 s, overhead
  0.26 s mean (0.31 s max), 0.64 s shared out; the baseline (each notebook alone in a fresh
  Python) 177-179 s for all, so the grader took 0.45x (--jobs 1) and 0.25x (--jobs 2) its time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grading_submissions as subs  # noqa: E402  (tests/grading_submissions: builds notebooks)

from utils import build  # noqa: E402
from utils.grading.batch import Gradebook, columns, discover, run_batch  # noqa: E402
from utils.grading.grade import Options, Runtime  # noqa: E402
from utils.grading.plan import build_plan  # noqa: E402
from utils.grading.privileges import prepare  # noqa: E402
from utils.grading.sandbox import Limits, resolve_sandbox  # noqa: E402

BASELINE = """
import sys, time, nbformat
from IPython.core.interactiveshell import InteractiveShell
nb = nbformat.read(sys.argv[1], as_version=4)
shell = InteractiveShell.instance()
for cell in nb.cells:
    meta = cell.metadata.get("nbgrader", {})
    if cell.cell_type == "code" and not (meta.get("grade") and not meta.get("solution")):
        shell.run_cell(cell.source, silent=True)
"""


def make_batch(root: Path, n: int, slug: str) -> dict[str, str]:
    kinds = {}
    for i in range(n):
        kind = "correct" if i % 5 < 3 else ("partly_wrong" if i % 5 == 3 else "stub")
        if kind == "correct":
            nb = subs.correct(slug)
        elif kind == "partly_wrong":
            nb = subs.correct(slug)
            if slug == "00_orientation":
                subs.set_cell(nb, subs.PER_TOKEN_LOSS, subs.PARTLY_WRONG_LOSS)
            else:  # the first exercise as released, not done
                blank = subs.chapter(slug)
                first = next(c for c in blank.cells if c.metadata.get("nbgrader", {}).get("solution"))
                subs.set_cell(nb, first.metadata["nbgrader"]["grade_id"], first.source)
        else:
            nb = subs.chapter(slug)
        subs.write(root, slug, f"student{i:02d}", nb)
        kinds[f"student{i:02d}"] = kind
    return kinds


def baseline(root: Path, kinds: dict[str, str], slug: str) -> dict[str, float]:
    """Seconds to run one notebook of each kind in a fresh Python process, no grader."""
    env = dict(os.environ, MPLBACKEND="Agg", DEMYSTIFY_PROGRESS=os.devnull)
    out = {}
    for kind in sorted(set(kinds.values())):
        student = next(s for s, k in kinds.items() if k == kind)
        path = root / student / slug / f"{slug}.ipynb"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", BASELINE, str(path)], env=env, capture_output=True, check=False,
                       cwd=tempfile.gettempdir())
        out[kind] = time.perf_counter() - t0
    return out


def grade(root: Path, jobs: int, sandbox: str, work: Path, slug: str):
    base = tempfile.mkdtemp(prefix="bench-", dir=work)
    options = Options(limits=Limits(timeout_cell=120, timeout_total=600), sandbox=sandbox, scratch_base=base,
                      hide_dirs=[str(root), base], protected=[str(root), base])
    if sandbox == "basic" and os.geteuid() == 0:
        os.chmod(work, 0o755)
        options.unprivileged = prepare(base)
    t0 = time.perf_counter()
    runtime = Runtime(options).start()  # the zygote imports while the chapter is planned
    try:
        plan = build_plan(slug)
        runtime.set_plan(plan)
        runtime.get_zygote()
        startup = time.perf_counter() - t0
        gradebook = Gradebook(work / f"grades-jobs{jobs}.csv", columns(plan))
        report = run_batch(discover(root, slug), plan, options, gradebook, jobs=jobs, runtime=runtime)
    finally:
        runtime.close()
    return time.perf_counter() - t0, startup, report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sandbox", default="auto", choices=("auto", "namespace", "basic"))
    p.add_argument("--chapter", default="00", help="chapter number or slug (default 00)")
    args = p.parse_args()
    sandbox = resolve_sandbox(args.sandbox)
    slug = build.resolve([args.chapter])[0]
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        work = Path(tmp)
        root = work / "submitted"
        kinds = make_batch(root, args.n, slug)
        print(f"{args.n} {slug} submissions ({', '.join(f'{v} {k}' for k, v in sorted(_count(kinds).items()))}); "
              f"sandbox {sandbox}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")
        base = baseline(root, kinds, slug)
        base_total = sum(base[k] for k in kinds.values())
        print("baseline, each notebook alone in a fresh Python process: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(base.items()))
              + f"; {base_total:.1f} s for all, one by one")
        walls = {}
        for jobs in args.jobs:
            wall, startup, report = grade(root, jobs, sandbox, work, slug)
            walls[jobs] = wall
            grades = report.graded
            assert len(grades) == args.n and all(g.status == "graded" for g in grades), [g.error for g in grades]
            own = [g.own_seconds for g in grades]
            per_sub = [g.seconds - g.own_seconds for g in grades]
            amortised = (wall * jobs - sum(own)) / args.n
            print(f"--jobs {jobs}: {wall:.1f} s in all ({startup:.1f} s start-up: plan + zygote imports), "
                  f"{wall / args.n:.2f} s per submission")
            print(f"    own execution (cells + calls, inside the sandbox): {statistics.mean(own):.2f} s mean")
            print(f"    overhead beyond it, per submission: {statistics.mean(per_sub):.2f} s mean, "
                  f"{max(per_sub):.2f} s "
                  f"max (fork, sandbox, feeding, watching, scoring); {amortised:.2f} s with the start-up and idle "
                  f"workers shared out")
            print(f"    vs the baseline (every notebook alone, one by one): {wall / base_total:.2f}x its time")
        if 1 in walls:
            for jobs, wall in walls.items():
                if jobs != 1:
                    print(f"speed-up of --jobs {jobs} over --jobs 1: {walls[1] / wall:.2f}x")


def _count(kinds: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds.values():
        out[k] = out.get(k, 0) + 1
    return out


if __name__ == "__main__":
    main()
