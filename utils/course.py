"""The course registry: one record per chapter, read by everything that needs chapter facts.

Progress tables, the notebook build, the notebook tests and the README's course map all read
``CHAPTERS`` so that a chapter's number, slug, title, reference package, checks module and time
budget are written down once. ``python -m utils.course`` prints the README's course map table;
tests/test_course.py checks that the README shows exactly that table and that every chapter has
its solution, student notebook, reference package, checks module and check tests.

The course's one matrix layout (the code's convention; markdown may use the papers' column vectors
and each chapter says once how the two correspond): activations are row vectors and a layer is
``x @ W``; every weight is ``[d_in, d_out]`` (TransformerLens's ``W_Q [n_heads, d_model, d_head]``,
``W_O [n_heads, d_head, d_model]``, ``W_E [d_vocab, d_model]``, ``W_U [d_model, d_vocab]``); SAEs are
laid out as SAELens lays them out (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from utils.exercise_index import chapter_minutes
from utils.notebook_setup import REPO_URL
from utils.paths import REPO

# Cells tagged with this (Jupyter's cell tags) are not run under grading: demo cells after the last
# exercise that would take longer than the per-cell timeout, e.g. chapter 05's SAE training.
SKIP_WHEN_GRADING = "skip-when-grading"


@dataclass(frozen=True)
class Chapter:
    number: str  # "03": the prefix of the slug, the checks module and the progress table's key
    slug: str  # folder and notebook name under solutions/ and chapters/
    title: str
    summary: str  # the course map's "you will" column
    package: str  # the reference implementations students read, e.g. "utils.induction"
    budget_seconds: int  # how long the solution notebook should take on a 2-core CPU
    kernel_threads: int = 1  # threads its notebook test runs with (05 trains live on both cores)

    @property
    def checks(self) -> str:
        return f"utils.checks.ch{self.number}"

    @property
    def solution(self) -> Path:
        return REPO / "solutions" / self.slug / f"{self.slug}.ipynb"

    @property
    def notebook(self) -> Path:
        return REPO / "chapters" / self.slug / f"{self.slug}.ipynb"

    @property
    def check_tests(self) -> tuple[Path, ...]:
        """The tests of this chapter's checks: tests/test_chNN_checks.py first, then any
        tests/test_chNN_<part>_checks.py (chapter 03 has three); tests/test_check_contract.py reads its
        data from them. Empty outside a repository checkout (an installed wheel has no tests/)."""
        return tuple(sorted((REPO / "tests").glob(f"test_ch{self.number}_*checks.py"),
                            key=lambda path: (path.name != f"test_ch{self.number}_checks.py", path.name)))

    @property
    def colab_url(self) -> str:
        path = REPO_URL.removeprefix("https://github.com/")
        return f"https://colab.research.google.com/github/{path}/blob/main/chapters/{self.slug}/{self.slug}.ipynb"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("00", "00_orientation", "Orientation",
            "load a bundled model, cache activations, write a caching hook and an ablation hook, pass your first "
            "checks",
            "utils.models", 60),
    Chapter("01", "01_tensorized_attention", "Tensorized attention",
            r"write attention as $(A \otimes W_O W_V)\,x$ and expand a 1-layer model into paths that sum to its "
            "logits",
            "utils.attention", 180),
    Chapter("02", "02_qk_ov_circuits", "QK and OV circuits",
            r"read skip-trigrams off $W_E^\top W_Q^\top W_K W_E$ and $W_U W_O W_V W_E$, then confirm them by "
            "running the model",
            "utils.circuits", 180),
    Chapter("03", "03_copying_and_composition", "Copying and composition",
            "eigenvalue copying scores; induction heads in a 2-layer model (seeded by a synthetic curriculum): the "
            "phase change on a copying task, K-composition and OV circuits from the weights, ablation, activation "
            "patching, direct logit attribution, natural text; train your own induction heads",
            "utils.induction", 240),
    Chapter("04", "04_superposition", "Superposition",
            "reproduce the toy models of Elhage et al. (2022): sparsity sweeps, antipodal pairs, feature "
            "dimensionality",
            "utils.superposition", 240),
    Chapter("05", "05_sparse_autoencoders", "Sparse autoencoders",
            "write the SAE of Towards Monosemanticity piece by piece, train one on a 1-layer model's MLP in a few "
            "CPU minutes (or bigger on a GPU), and measure L0, FVE, CE loss recovered and dead features; L1 vs "
            "TopK",
            "utils.sae", 240, kernel_threads=2),
    Chapter("06", "06_interpreting_features", "Interpreting features",
            "judge SAE features by specificity, sensitivity, logit weights, ablation and steering, not-a-neuron "
            "and universality across seeds; watch a feature split; hunt your own",
            "utils.features", 240),
    Chapter("07", "07_attribution_graphs", "Attribution graphs",
            "replace gelu-2l's MLPs by transcoders, freeze attention and LayerNorms on a prompt, and build its "
            "attribution graph: edges checked by intervention, influence, pruning, replacement and completeness "
            "scores, an offline graph view, and interventions in the real model",
            "utils.attribution", 240),
)


def chapter(name: str) -> Chapter:
    """The chapter with this number ("03") or slug; ValueError names the known ones."""
    for ch in CHAPTERS:
        if name in (ch.number, ch.slug):
            return ch
    raise ValueError(f"unknown chapter {name!r} (known: {', '.join(ch.number for ch in CHAPTERS)})")


BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def duration(minutes: int) -> str:
    """'~2 h 35 min' for the course map."""
    hours, rest = divmod(minutes, 60)
    return f"~{hours} h {rest} min" if hours else f"~{rest} min"


def course_map() -> str:
    """The README's course map: a markdown table, one row per chapter. A chapter's time is the sum of
    its exercises' estimates (their headings, through utils/assets/exercises.json)."""
    rows = ["| # | chapter | you will | exercise time | open in Colab |", "|---|---|---|---|---|"]
    for ch in CHAPTERS:
        link = f"chapters/{ch.slug}/{ch.slug}.ipynb"
        rows.append(f"| {ch.number} | [{ch.title}]({link}) | {ch.summary} | {duration(chapter_minutes(ch.number))} | "
                    f"[![Open In Colab]({BADGE})]({ch.colab_url}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.course", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(course_map())


if __name__ == "__main__":
    main()
