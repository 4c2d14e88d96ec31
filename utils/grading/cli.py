"""``python -m utils.grading SUBMISSIONS --chapter NN --out grades.csv [options]``

``python -m utils.grading merge --out grades.csv SHARD.csv [SHARD.csv ...]`` combines the
gradebooks of ``--shard 1/N`` ... ``--shard N/N`` runs into the one a single run writes.

``python -m utils.grading report grades.csv --out report.html [--csv counts.csv]`` writes the class
report (see utils/grading/report.py).

Exit status: 0 when every submission was graded (bad notebooks included: they get an ``invalid``
row), 1 when a grader-side error left some ungraded (they are retried by the next run), 2 for bad
arguments or input (the message says what is wrong), 130 when interrupted (nothing graded is lost).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from utils import build
from utils.checks.questions import BANK_NAME
from utils.paths import REPO


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.grading",
        description="Grade student notebooks in a sandbox: each submission runs in its own process and "
                    "scratch folder; the checks run in the grader, on the outputs it sends back.")
    p.add_argument("submissions", type=Path, help="a folder of submissions (nbgrader's submitted/, "
                   "<student>/<notebook>.ipynb or <student>.ipynb) or a single notebook")
    p.add_argument("--chapter", required=True, help="chapter number or slug, e.g. 00 or 00_orientation")
    p.add_argument("--out", required=True, type=Path, help="CSV gradebook (appended to; see --regrade)")
    p.add_argument("--feedback", type=Path, help="folder for one <student>.md feedback file each")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="submissions run at once (default: CPU cores)")
    p.add_argument("--timeout-cell", type=float, default=120.0, help="seconds per cell and per call of a "
                   "student's function (default 120, as in nbgrader_config.py)")
    p.add_argument("--timeout-total", type=float, default=600.0, help="seconds per submission (default 600)")
    p.add_argument("--memory-mb", type=int, default=4096, help="memory a submission may use on top of "
                   "Python, torch and the course package (default 4096)")
    p.add_argument("--sandbox", choices=("auto", "namespace", "basic"), default="auto",
                   help="namespace: hidden files, read-only filesystem, no network, no other processes "
                        "(needs user namespaces); basic: limits and the audit hook only; auto (default): "
                        "namespace where it works")
    p.add_argument("--regrade", action="store_true", help="grade every submission again, even unchanged ones")
    p.add_argument("--shard", help="I/N: grade only the I-th of N deterministic slices of the students (for a job "
                   "array; combine the N gradebooks with `python -m utils.grading merge`)")
    p.add_argument("--solutions", type=Path, default=build.SOLUTIONS, help=argparse.SUPPRESS)
    return p


def merge_main(argv: list[str]) -> int:
    from utils.grading.batch import BatchError, merge_gradebooks

    p = argparse.ArgumentParser(prog="python -m utils.grading merge",
                                description="Combine shard gradebooks into one (one row per student, sorted).")
    p.add_argument("gradebooks", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        n = merge_gradebooks(args.gradebooks, args.out)
    except BatchError as e:
        return _fail(str(e))
    print(f"merged {len(args.gradebooks)} gradebook(s): {n} student(s) in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    if argv[:1] == ["report"]:
        from utils.grading.report import main as report_main

        return report_main(argv[1:])
    args = _parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from utils.grading.batch import BatchError, cleanup, discover

    if args.jobs < 1 or args.timeout_cell <= 0 or args.timeout_total <= 0 or args.memory_mb < 64:
        return _fail("--jobs must be >= 1, timeouts > 0 and --memory-mb >= 64")
    try:
        slug = build.resolve([args.chapter], args.solutions)[0]
    except ValueError as e:
        return _fail(str(e))
    try:
        subs = discover(args.submissions, slug)
        if args.shard:
            from utils.grading.batch import in_shard, parse_shard

            index, count = parse_shard(args.shard)
            subs = [s for s in subs if in_shard(s.student, index, count)]
            print(f"shard {index}/{count}: {len(subs)} submission(s)", flush=True)
    except BatchError as e:
        return _fail(str(e))
    base = tempfile.mkdtemp(prefix="demystify-grading-")
    try:
        return _grade(args, slug, subs, base)
    finally:
        cleanup(base)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _grade(args, slug: str, subs: list, base: str) -> int:
    from utils.grading.batch import BatchError, Gradebook, columns, essential_paths, run_batch, summary
    from utils.grading.grade import Options, Runtime
    from utils.grading.plan import PlanError, build_plan, grade_ids_of, trusted_notebook
    from utils.grading.policy import confinement_policy
    from utils.grading.sandbox import Limits, SandboxError, resolve_sandbox

    try:
        sandbox = resolve_sandbox(args.sandbox)
    except RuntimeError as e:
        return _fail(str(e))
    limits = Limits(timeout_cell=args.timeout_cell, timeout_total=args.timeout_total, memory_mb=args.memory_mb)
    from utils.grading import seccomp

    # resolve_sandbox has checked the filter for "namespace"; "basic" takes it where the kernel does.
    options = Options(limits=limits, sandbox=sandbox, scratch_base=base,
                      seccomp=sandbox == "namespace" or seccomp.available())
    if sandbox == "basic" and os.geteuid() == 0:  # each submission as an unprivileged user of its own
        from utils.grading.privileges import PrivilegeError, prepare

        try:
            options.unprivileged = prepare(base)
        except PrivilegeError as e:
            return _fail(str(e))
    runtime = Runtime(options).start()  # the zygote imports torch & co. while the chapter is planned
    try:
        try:
            plan = build_plan(slug, args.solutions)
        except (PlanError, ValueError) as e:
            return _fail(f"cannot grade {slug}: {e}")
        try:
            gradebook = Gradebook(args.out, columns(plan))
        except (BatchError, OSError) as e:
            return _fail(str(e))
        if args.feedback is not None:
            try:
                args.feedback.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                return _fail(f"--feedback {args.feedback}: {e}")
        if sandbox == "basic":
            print("warning: grading with the basic sandbox (limits and an audit hook; submissions can see the "
                  "filesystem): user namespaces are unavailable here or --sandbox basic was given", file=sys.stderr)
        if not options.seccomp:
            print("warning: no seccomp filter either (the kernel refuses it): submissions can start processes",
                  file=sys.stderr)

        policy = confinement_policy(
            submissions=str(args.submissions), scratch_base=base, gradebook=str(args.out),
            feedback=None if args.feedback is None else str(args.feedback), solutions=str(args.solutions),
            repo=str(REPO), banks=[str(p) for p in sorted(build.CHAPTERS.glob(f"*/{BANK_NAME}"))],
            essentials=essential_paths())
        for warning in policy.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if options.unprivileged:
            from utils.grading.privileges import world_writable

            roots = [str(args.submissions), str(Path(args.out).resolve().parent)] + (
                [str(args.feedback)] if args.feedback else [])
            for path in world_writable(roots):
                print(f"warning: {path} is writable by every user, the submissions' too: chmod o-w it",
                      file=sys.stderr)
        options.hide_dirs, options.hide_files = list(policy.hide_dirs), list(policy.hide_files)
        options.protected = list(policy.protected)
        for other in build.discover(args.solutions):  # to name the chapter a wrong notebook belongs to
            if other != slug:
                try:
                    options.other_chapters[other] = grade_ids_of(build.read_source(trusted_notebook(other,
                                                                                                   args.solutions)))
                except build.BuildError:
                    continue  # an unreadable trusted notebook: that chapter is just never named
        print(f"grading {len(subs)} submission(s) of {slug} ({plan.max_points:g} points) with the {sandbox} "
              f"sandbox, {args.jobs} at a time", flush=True)

        def progress(grade) -> None:
            print(f"  {grade.student}: {grade.status} {grade.total:g}/{grade.max_total:g} ({grade.seconds:.1f} s)",
                  flush=True)

        try:
            report = run_batch(subs, plan, options, gradebook, feedback=args.feedback, jobs=args.jobs,
                               regrade=args.regrade, on_grade=progress, runtime=runtime)
        except SandboxError as e:
            return _fail(str(e))
        except KeyboardInterrupt:
            print("interrupted: the gradebook keeps every submission graded so far", file=sys.stderr)
            return 130
    finally:
        runtime.close()
    print(summary(report, plan), end="")
    for line in report.changed:
        print(f"warning: {line}", file=sys.stderr)
    print(f"gradebook: {args.out}" + (f"; feedback: {args.feedback}/" if args.feedback else ""))
    return 1 if any(g.status == "error" for g in report.graded) else 0
