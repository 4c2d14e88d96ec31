"""The class report: ``python -m utils.grading report GRADES.csv --out report.html``.

From a gradebook the sandboxed grader wrote, for the instructor: per exercise the mean, the score
distribution, and how many students hit each misconception the checks name ("There is no causal
mask ...: 14 of 60"); the students with flags (references used, refused actions, edited tests);
time-outs; pairs of students whose solution code is unusually alike, with their shared passages
side by side (``similarity``). One self-contained HTML file (figures inline as PNG, no scripts, no
network) and, with ``--csv``, the misconception counts as a table.
"""
from __future__ import annotations

import base64
import csv
import html
import importlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from utils.grading.batch import BatchError, csv_cell, from_csv_cell


@dataclass
class ExerciseSummary:
    grade_id: str
    max_points: float
    scores: list = field(default_factory=list)
    misconceptions: Counter = field(default_factory=Counter)  # explanation -> students
    other_failures: Counter = field(default_factory=Counter)  # "not implemented", "timeout", ...


def _read(path: Path) -> list[dict]:
    if not Path(path).is_file():
        raise BatchError(f"{path}: no such gradebook")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k: from_csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows or "student" not in rows[0] or "chapter" not in rows[0]:
        raise BatchError(f"{path}: not a gradebook of python -m utils.grading (or it is empty)")
    return rows


def _named_misconceptions(checks_module: str, bank: dict) -> list[str]:
    """Every diagnosis sentence the chapter's checks can give: misconception explanations and the
    trusted question bank's explanations of wrong answers."""
    from utils.checks.core import Exercise

    module = importlib.import_module(checks_module)
    sentences: list[str] = []
    for value in vars(module).values():
        if isinstance(value, Exercise):
            sentences += [m.explanation for m in value.misconceptions]
    for question in bank.values():
        sentences += list(question.explanations.values())
    return sorted({s for s in sentences if len(s) > 15}, key=len, reverse=True)


def _failure_kind(message: str) -> str:
    for needle, kind in (("not implemented yet", "not implemented"), ("time limit", "timeout"),
                         ("timed out", "timeout"), ("course's reference implementation", "used a reference"),
                         ("raised", "raised an exception"), ("is not defined", "function missing"),
                         ("No function", "function missing")):
        if needle in message:
            return kind
    return "other wrong answer"


def summarise(rows: list[dict], solutions_dir: Path | None = None) -> tuple[str, list[ExerciseSummary], dict]:
    """(chapter slug, per-exercise summaries, class facts) from gradebook rows."""
    from utils import build
    from utils.grading.plan import build_plan

    slugs = {r["chapter"] for r in rows}
    if len(slugs) != 1:
        raise BatchError(f"the gradebook mixes chapters: {sorted(slugs)}")
    slug = slugs.pop()
    plan = build_plan(slug, solutions_dir or build.SOLUTIONS)
    sentences = _named_misconceptions(plan.module, plan.questions)
    graded = [r for r in rows if r["status"] == "graded"]
    summaries = []
    for cell in plan.cells:
        ex = ExerciseSummary(cell.grade_id, cell.points)
        for r in graded:
            points = float(r.get(cell.grade_id) or 0)
            ex.scores.append(points)
            message = r.get(f"{cell.grade_id} message", "")
            if points < cell.points and message:
                hit = next((s for s in sentences if s in message), None)
                if hit:
                    ex.misconceptions[hit] += 1
                else:
                    ex.other_failures[_failure_kind(message)] += 1
        summaries.append(ex)
    facts = {
        "students": len(rows), "graded": len(graded),
        "not graded": sorted(f"{r['student']} ({r['status']}: {r.get('error', '')})" for r in rows
                             if r["status"] != "graded"),
        "max_total": plan.max_points,
        "totals": [float(r["total"]) for r in graded],
        "flagged": sorted((r["student"], r["flags"]) for r in rows if r.get("flags")),
        "cell_flags": sorted((r["student"], c.grade_id, r[f"{c.grade_id} flags"]) for r in rows for c in plan.cells
                             if r.get(f"{c.grade_id} flags")),
        "timeouts": sorted(r["student"] for r in rows if "timeout" in (r.get("flags", "") + " ".join(
            r.get(f"{c.grade_id} flags", "") for c in plan.cells))),
    }
    return slug, summaries, facts


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(summaries: list[ExerciseSummary], facts: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(facts["totals"], bins=min(20, max(5, len(facts["totals"]))), range=(0, facts["max_total"] or 1),
            color="#4a7ab5")
    ax.set_xlabel("total points")
    ax.set_ylabel("students")
    ax.set_title(f"totals (out of {facts['max_total']:g})")
    out["totals"] = _figure_png(fig)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(summaries) + 1))
    names = [s.grade_id for s in summaries][::-1]
    means = [(sum(s.scores) / len(s.scores) / s.max_points if s.scores and s.max_points else 0)
             for s in summaries][::-1]
    ax.barh(names, means, color="#5a9e6f")
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean score (fraction of the cell's points)")
    out["means"] = _figure_png(fig)
    return out


def _similarity_html(pairs: list, notes: list) -> list[str]:
    """The similar pairs, each with its shared passages side by side (see similarity.py)."""
    e = html.escape
    from utils.grading.similarity import MIN_SHARED, THRESHOLD

    parts = ["<h2>Similar solution code</h2>",
             f"<p>Pairs whose solution cells share at least {THRESHOLD:.0%} of the smaller one's fingerprints "
             f"(and at least {MIN_SHARED}), after names, quotes, comments and layout are normalised and the "
             "code every student was given is left out. Similar is not copied: read the passages.</p>"]
    if not pairs:
        parts.append("<p>None.</p>")
    for p in pairs:
        parts.append(f"<h3>{e(p.a)} and {e(p.b)}: {p.score:.0%} ({p.shared} shared fingerprints)</h3>"
                     f"<table class='pair'><tr><th>{e(p.a)}</th><th>{e(p.b)}</th></tr>")
        for ga, la, text_a, gb, lb, text_b in p.passages:
            parts.append(f"<tr><td><i>{e(ga)}, line {la}</i><pre>{e(text_a)}</pre></td>"
                         f"<td><i>{e(gb)}, line {lb}</i><pre>{e(text_b)}</pre></td></tr>")
        parts.append("</table>")
    if notes:
        parts.append("<p>Not compared:</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    return parts


def render_html(slug: str, summaries: list[ExerciseSummary], facts: dict, similar: tuple = ([], [])) -> str:
    figs = _figures(summaries, facts)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Class report: {e(slug)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top}th{background:#f2f2f2}.num{text-align:right}"
             ".pair td{width:50%}.pair pre{margin:2px 0;white-space:pre-wrap;background:#fff6d5}</style></head><body>",
             f"<h1>Class report: {e(slug)}</h1>",
             f"<p>{facts['graded']} of {facts['students']} submissions graded; mean total "
             f"{(sum(facts['totals']) / len(facts['totals']) if facts['totals'] else 0):.2f} of {facts['max_total']:g}."
             "</p>",
             f"<img alt='totals' src='data:image/png;base64,{figs['totals']}'>",
             f"<img alt='means' src='data:image/png;base64,{figs['means']}'>",
             "<h2>Exercises</h2><table><tr><th>exercise</th><th>points</th><th>mean</th><th>full marks</th>"
             "<th>zero</th><th>what went wrong (students)</th></tr>"]
    n = facts["graded"] or 1
    for s in summaries:
        mean = sum(s.scores) / len(s.scores) if s.scores else 0
        full = sum(1 for x in s.scores if x >= s.max_points)
        zero = sum(1 for x in s.scores if x == 0)
        wrong = [f"{e(k)}: <b>{v} of {n}</b>" for k, v in s.misconceptions.most_common()]
        wrong += [f"<i>{e(k)}</i>: {v} of {n}" for k, v in s.other_failures.most_common()]
        parts.append(f"<tr><td>{e(s.grade_id)}</td><td class='num'>{s.max_points:g}</td><td class='num'>{mean:.2f}</td>"
                     f"<td class='num'>{full}</td><td class='num'>{zero}</td><td>{'<br>'.join(wrong) or '-'}</td></tr>")
    parts.append("</table><h2>Flagged students</h2>")
    if facts["flagged"] or facts["cell_flags"]:
        parts.append("<table><tr><th>student</th><th>where</th><th>flags</th></tr>")
        parts += [f"<tr><td>{e(st)}</td><td>submission</td><td>{e(fl)}</td></tr>" for st, fl in facts["flagged"]]
        parts += [f"<tr><td>{e(st)}</td><td>{e(g)}</td><td>{e(fl)}</td></tr>" for st, g, fl in facts["cell_flags"]]
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append(f"<h2>Time-outs</h2><p>{e(', '.join(facts['timeouts'])) or 'None.'}</p>")
    if facts["not graded"]:
        parts.append("<h2>Not graded</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in facts["not graded"]) + "</ul>")
    parts += _similarity_html(*similar)
    parts.append("</body></html>\n")
    return "".join(parts)


def write_csv(path: Path, summaries: list[ExerciseSummary], facts: dict) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["exercise", "max_points", "mean", "students", "what went wrong", "how many"])
        for s in summaries:
            mean = sum(s.scores) / len(s.scores) if s.scores else 0
            rows = list(s.misconceptions.most_common()) + list(s.other_failures.most_common()) or [("", 0)]
            for what, count in rows:
                w.writerow([s.grade_id, f"{s.max_points:g}", f"{mean:.3f}", facts["graded"], csv_cell(what), count])


def main(argv: list[str]) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m utils.grading report", description=__doc__.split("\n\n")[0])
    p.add_argument("gradebook", type=Path)
    p.add_argument("--out", required=True, type=Path, help="the HTML report")
    p.add_argument("--csv", type=Path, help="also write the per-exercise counts as CSV")
    p.add_argument("--solutions", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        rows = _read(args.gradebook)
        slug, summaries, facts = summarise(rows, args.solutions)
    except (BatchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from utils.grading.similarity import class_pairs

    pairs, notes = class_pairs(rows, slug, args.solutions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_html(slug, summaries, facts, (pairs, notes)), encoding="utf-8")
    if args.csv:
        write_csv(args.csv, summaries, facts)
    print(f"report for {facts['students']} student(s) of {slug}: {args.out}" + (f", {args.csv}" if args.csv else ""))
    for p in pairs:
        print(f"similar solution code: {p.a} and {p.b} ({p.score:.0%}, {p.shared} shared fingerprints)")
    for note in notes:
        print(f"not compared for similarity: {note}")
    return 0
