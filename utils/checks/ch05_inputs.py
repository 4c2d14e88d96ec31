"""Random inputs shared by chapter 05's checks (``utils.checks.ch05``): sizes that never coincide,
uniform draws, sparse non-negative activations, and ``scalar``, which accepts a plain Python
number where the reference returns a 0-d tensor.
"""
from __future__ import annotations

import torch

from utils.checks.toolkit import randint


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def sizes(g: torch.Generator) -> tuple[int, int, int]:
    """(batch, d_in, d_sae), never equal to each other."""
    return randint(g, 9, 13), randint(g, 4, 7), randint(g, 14, 20)


def sparse_activations(g: torch.Generator, batch: int, d_sae: int, p: float = 0.3) -> torch.Tensor:
    """Non-negative, mostly zero, values far from 1 (so a count and a sum of values differ)."""
    return (0.2 + 2.5 * torch.rand(batch, d_sae, generator=g)) * (torch.rand(batch, d_sae, generator=g) < p)


def scalar(fn):
    """Accept a plain Python number where the reference returns a 0-d tensor (``.item()`` is fine)."""
    if not callable(fn):
        return fn

    def wrapper(**inputs):
        out = fn(**inputs)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return torch.tensor(float(out), dtype=torch.float64)
        return out
    return wrapper
