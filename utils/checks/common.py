"""Helpers shared by the checks of chapters that use the bundled 1-layer model (01, 02)."""
from __future__ import annotations

from functools import lru_cache, wraps

import math

import torch

from utils.attention import causal_mask
from utils.checks.core import Misconception

INF = float("inf")


def _nan_as_inf(fn):
    """NaN never equals NaN, so a NaN-producing mistake (a fully masked softmax row) could not be
    recognised. Map NaN to +inf in every returned tensor: inf == inf, and any inf still fails."""
    if not callable(fn):
        return fn

    def clean(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return torch.nan_to_num(value, nan=INF, posinf=INF, neginf=-INF)
        if isinstance(value, tuple):
            return tuple(clean(v) for v in value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    @wraps(fn)
    def wrapped(*args, **kwargs):
        return clean(fn(*args, **kwargs))

    return wrapped


def _m(name: str, explanation: str, implementation) -> Misconception:
    return Misconception(name, explanation, _nan_as_inf(implementation))


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _random_pattern(g: torch.Generator, *shape_and_n: int) -> torch.Tensor:
    """Random causal attention patterns [..., n, n]: rows sum to 1, zero above the diagonal."""
    *lead, n = shape_and_n
    scores = torch.randn(*lead, n, n, generator=g) * 1.5
    return scores.masked_fill(~causal_mask(n), -INF).softmax(-1)


@lru_cache(maxsize=1)
def _model():
    from utils.models import load_model

    return load_model("attn-only-1l", device="cpu")


def _circuit_sizes(g: torch.Generator, square: bool) -> tuple[int, int, int, int]:
    """(heads, d_vocab, d_model, d_head) for a random circuit case. Square sizes (all equal) let
    every transposition still run, so a check can name it; otherwise d_head < d_model < d_vocab."""
    h = _randint(g, 1, 3)
    if square:
        vocab = d = k = _randint(g, 4, 7)
    else:
        d = _randint(g, 6, 10)
        k, vocab = _randint(g, 2, d - 2), d + _randint(g, 3, 9)
    return h, vocab, d, k


def _random_ov_weights(g: torch.Generator, square: bool) -> dict:
    """Random {W_E, W_V, W_O, W_U} (W_V, W_O with a head axis), scaled so products stay O(1)."""
    h, vocab, d, k = _circuit_sizes(g, square)
    return dict(W_E=torch.randn(vocab, d, generator=g), W_V=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_O=torch.randn(h, k, d, generator=g) / math.sqrt(k),
                W_U=torch.randn(d, vocab, generator=g) / math.sqrt(d))
