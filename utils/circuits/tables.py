"""Skip-trigrams as text and HTML tables (chapter 02): tokens shown with their escapes, the
slides' table of heads, sources, destinations and outs."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

from utils.circuits.experiments import SkipTrigrams


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def show_token(token: str) -> str:
    """A token in quotes with newlines and tabs visible, as in the slides' table."""
    return '"' + _escape(token) + '"'


@dataclass
class TrigramTable:
    """Rows of strings; shows as an HTML table in a notebook and as plain text elsewhere."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left;font-family:monospace'>{html.escape(x)}</td>"
                                         for x in row) + "</tr>" for row in self.rows)
        caption = f"<caption style='text-align:left'>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        line = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths)).rstrip()
        out = ([self.title] if self.title else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(out + [line(r) for r in self.rows])

    __repr__ = __str__


def skip_trigram_table(trigrams: SkipTrigrams, to_str: Callable[[int], str], n_dest: int = 4,
                       n_out: int = 4, n_examples: int = 2, title: str = "") -> TrigramTable:
    """The slides' table: head, source token, destination tokens, out tokens, and example
    skip-trigrams "A ... B C" pairing the i-th destination with the i-th out."""
    rows = []
    for r in range(len(trigrams)):
        a = to_str(int(trigrams.sources[r]))
        dests = [to_str(int(t)) for t in trigrams.destinations[r, :n_dest]]
        outs = [to_str(int(t)) for t in trigrams.outs[r, :n_out]]
        examples = [trigram_string(a, b, c) for b, c in zip(dests[:n_examples], outs[:n_examples])]
        rows.append([str(int(trigrams.heads[r])), show_token(a), ", ".join(map(show_token, dests)),
                     ", ".join(map(show_token, outs)), ", ".join(examples)])
    return TrigramTable(["head", "source token", "destination tokens", "out tokens", "example skip-trigrams"],
                        rows, title)


def trigram_string(a: str, b: str, c: str) -> str:
    """ "A ... BC" with escapes, e.g. '"try ... :except"' (C follows B directly)."""
    return f'"{_escape(a)} ... {_escape(b)}{_escape(c)}"'
