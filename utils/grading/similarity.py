"""Pairs of students whose solution code is unusually alike (for ``python -m utils.grading report``).

Only what students wrote counts: the code of their solution cells (the cells nbgrader marks as
solution in the trusted notebook, found by ``grade_id``; in a notebook that still has them, only
the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION``), less every line the released
notebook gives (signatures, docstrings, starter code). Each cell is reduced to tokens that survive
renaming and reformatting: every name a student chooses becomes ``N`` (names after a dot, such as
``.softmax``, are the library's and stay), strings count by their value (``"ij->i"`` and
``'ij->i'`` alike); comments, line breaks and indentation are dropped. Runs of ``K`` tokens are
hashed, and winnowing (Schleimer, Wilkerson and Aiken, 2003) keeps the smallest hash of every
``W`` consecutive ones: a passage of ``K + W - 1`` tokens shared by two students always leaves a
common fingerprint, wherever it sits, so moving functions around or between cells does not hide
a copy.

What everyone shares is no evidence: fingerprints of any code in the released notebook are
removed, and so is any fingerprint of more than ``common_share`` of the class (an idiom nearly
everyone writes; never one of ``COMMON_FLOOR`` students or fewer, so a copy shared by a few still
counts). A pair is reported when they share at least ``MIN_SHARED`` fingerprints and those make at
least ``threshold`` of the smaller student's own fingerprints.
"""
from __future__ import annotations

import ast
import hashlib
import io
import keyword
import tokenize
from dataclasses import dataclass, field

K = 10  # tokens per hashed run: about one line of code
W = 6  # winnowing window: any shared run of K + W - 1 = 15 tokens is found
MIN_SHARED = 6
THRESHOLD = 0.5
COMMON_SHARE = 0.5
COMMON_FLOOR = 4  # a fingerprint of up to this many students always counts (a copy shared by a few)

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
         tokenize.ENDMARKER}
_BEGIN, _END = "### BEGIN SOLUTION", "### END SOLUTION"


@dataclass
class Code:
    """One student's solution code: the cells' sources by grade_id, and its fingerprints."""
    student: str
    cells: dict  # grade_id -> source
    prints: dict = field(default_factory=dict)  # hash -> (grade_id, first line, last line) of its first run


@dataclass
class Pair:
    a: str
    b: str
    score: float  # shared fingerprints / the smaller student's fingerprints
    shared: int
    passages: list  # (grade_id_a, first line, text_a, grade_id_b, first line, text_b), in a's order


def solution_cells(nb, solution_ids: set) -> dict[str, str]:
    """grade_id -> source of each solution cell of ``nb`` (an nbformat notebook)."""
    out = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if cell.get("cell_type") == "code" and gid in solution_ids:
            out[gid] = cell.source
    return out


def given_lines(released) -> set[str]:
    """Every line of code the released notebook gives students (stripped), blank lines aside."""
    return {line.strip() for cell in released.cells if cell.cell_type == "code"
            for line in cell.source.split("\n") if line.strip()}


def tokens(source: str, given: frozenset = frozenset()) -> list[tuple[str, int]]:
    """(normalised token, line) of what the student wrote in ``source``: the lines between the
    solution markers where there are any, less the lines in ``given``; [] where Python cannot
    tokenise the cell (IPython magics, a syntax error: what came before the problem is kept)."""
    lines = source.split("\n")
    own = [line.strip() not in given for line in lines]
    if any(_BEGIN in line for line in lines):
        inside = False
        for i, line in enumerate(lines):
            marker = _BEGIN in line or _END in line
            inside = (inside or _BEGIN in line) and _END not in line
            own[i] = own[i] and inside and not marker
    out: list[tuple[str, int]] = []
    previous = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in _SKIP or not own[min(tok.start[0], len(own)) - 1]:
                previous = tok.string
                continue
            text = tok.string
            if tok.type == tokenize.NAME and not keyword.iskeyword(text) and previous != ".":
                text = "N"
            elif tok.type == tokenize.STRING:
                text = _literal(text)
            out.append((text, tok.start[0]))
            previous = tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return out
    return out


def _literal(text: str) -> str:
    """A string token by its value, whatever its quotes or prefix (an f-string: just a string)."""
    try:
        return "S" + repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return "S"


def _hash(run: list[tuple[str, int]]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(t for t, _ in run).encode(), digest_size=8).digest(), "big")


def all_hashes(source: str) -> set[int]:
    toks = tokens(source)
    return {_hash(toks[i:i + K]) for i in range(len(toks) - K + 1)}


def winnow(grade_id: str, source: str, given: frozenset = frozenset()) -> dict[int, tuple[str, int, int]]:
    """The fingerprints of one cell: hash -> (grade_id, first line, last line) of the run."""
    toks = tokens(source, given)
    runs = [(_hash(toks[i:i + K]), toks[i][1], toks[i + K - 1][1]) for i in range(len(toks) - K + 1)]
    chosen: dict[int, tuple[str, int, int]] = {}
    for start in range(max(1, len(runs) - W + 1)):
        window = runs[start:start + W]
        if not window:
            break
        low = min(h for h, _, _ in window)
        h, first, last = [r for r in window if r[0] == low][-1]  # the rightmost minimum
        chosen.setdefault(h, (grade_id, first, last))
    return chosen


def similar_pairs(codes: list[Code], template: set[int], given: frozenset = frozenset(),
                  threshold: float = THRESHOLD, min_shared: int = MIN_SHARED,
                  common_share: float = COMMON_SHARE) -> list[Pair]:
    """The pairs of ``codes`` above the thresholds, most similar first. ``given`` holds the lines
    and ``template`` every hash of the code students were given."""
    for code in codes:
        code.prints = {}
        for gid, source in code.cells.items():
            for h, where in winnow(gid, source, given).items():
                if h not in template:
                    code.prints.setdefault(h, where)
    counts: dict[int, int] = {}
    for code in codes:
        for h in code.prints:
            counts[h] = counts.get(h, 0) + 1
    common = {h for h, n in counts.items() if n > max(COMMON_FLOOR, common_share * len(codes))}
    kept = {c.student: {h: w for h, w in c.prints.items() if h not in common} for c in codes}
    pairs = []
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            fa, fb = kept[a.student], kept[b.student]
            shared = fa.keys() & fb.keys()
            smaller = min(len(fa), len(fb))
            if not smaller or len(shared) < min_shared or len(shared) / smaller < threshold:
                continue
            pairs.append(Pair(a.student, b.student, len(shared) / smaller, len(shared),
                              _passages(a, b, [(fa[h], fb[h]) for h in shared])))
    return sorted(pairs, key=lambda p: (-p.score, p.a, p.b))


def _passages(a: Code, b: Code, matches: list) -> list[tuple]:
    """Shared runs merged into passages (overlapping or adjacent lines on both sides), as text."""
    blocks: list[list] = []
    for (ga, a0, a1), (gb, b0, b1) in sorted(matches):
        last = blocks[-1] if blocks else None
        if last and last[0] == ga and last[3] == gb and a0 <= last[2] + 1 and last[4] - 1 <= b0 <= last[5] + 1:
            last[2], last[5] = max(last[2], a1), max(last[5], b1)
        elif not any(x[0] == ga and x[1] <= a0 and a1 <= x[2] for x in blocks):  # a's lines shown once
            blocks.append([ga, a0, a1, gb, b0, b1])

    def lines(code: Code, gid: str, first: int, last: int) -> str:
        return "\n".join(code.cells[gid].split("\n")[first - 1:last])

    return [(ga, a0, lines(a, ga, a0, a1), gb, b0, lines(b, gb, b0, b1)) for ga, a0, a1, gb, b0, b1 in blocks]


def class_pairs(rows: list[dict], slug: str, solutions_dir=None) -> tuple[list[Pair], list[str]]:
    """Similar pairs among the gradebook's students, from the notebooks its rows name; and notes
    on the notebooks left out (missing, or changed since they were graded)."""
    from utils import build
    from utils.grading.grade import read_notebook
    from utils.grading.plan import trusted_notebook

    released = build.read_source(build.CHAPTERS / slug / f"{slug}.ipynb")
    trusted = build.read_source(trusted_notebook(slug, solutions_dir or build.SOLUTIONS))
    solution_ids = {c.metadata["nbgrader"]["grade_id"] for c in trusted.cells
                    if c.metadata.get("nbgrader", {}).get("solution")}
    template: set[int] = set()
    for cell in released.cells:
        if cell.cell_type == "code":
            template |= all_hashes(cell.source)
    given = frozenset(given_lines(released))
    codes, notes = [], []
    for r in sorted(rows, key=lambda r: r["student"]):
        if r.get("status") != "graded":
            continue
        try:
            data = open(r["submission"], "rb").read()
        except OSError as e:
            notes.append(f"{r['student']}: notebook not read ({e.strerror}: {r['submission']})")
            continue
        if hashlib.sha256(data).hexdigest() != r.get("sha256"):
            notes.append(f"{r['student']}: left out, the notebook changed since it was graded")
            continue
        try:
            codes.append(Code(r["student"], solution_cells(read_notebook(data), solution_ids)))
        except ValueError as e:
            notes.append(f"{r['student']}: left out ({e})")
    return similar_pairs(codes, template, given), notes
