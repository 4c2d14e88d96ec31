"""Helpers shared by several chapters' checks: the bundled 1-layer model and random circuits (01-03),
and answers made of several named parts (05, 06)."""
from __future__ import annotations

import math
import re
from functools import lru_cache, wraps
from typing import Callable, Optional, Sequence

import torch

from utils.attention import causal_mask
from utils.checks.core import (CheckFailure, Exercise, Misconception, _describe_difference, not_callable_message,
                               outputs_match, run_check)

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


# --------------------------------------------------------------------------- describing tuple answers


def _describe_parts(names: Sequence[str], rtol: float, atol: float):
    """A describer for answers made of several named parts: which part is off, and how."""
    def describe(inputs: dict, got, expected) -> Optional[str]:
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            what = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            return f"return a tuple of {len(expected)} values ({', '.join(names)}); you returned {what}."
        for name, g, e in zip(names, got, expected):
            if outputs_match(g, e, rtol, atol):
                continue
            if isinstance(e, torch.Tensor) and not isinstance(g, torch.Tensor):
                return f"{name} should be a torch.Tensor, but it is a {type(g).__name__}."
            if isinstance(e, torch.Tensor):
                return f"{name} is wrong. {_describe_difference(g, e, inputs, rtol=rtol, atol=atol)}"
            return f"{name} is wrong: {_describe_difference(g, e, inputs, rtol=rtol, atol=atol)}"
        return None
    return describe


def _clone(inputs: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _run_described(ex: Exercise, fn, cases: Cases, describe: Callable,
                   call: Optional[Callable] = None) -> None:
    """run_check, with the generic "differs" message of a failing case replaced by ``describe``.

    ``call(fn, inputs)`` adapts the calling convention (default ``fn(**inputs)``); it runs inside
    the check's wrapper, so it may raise CheckFailure for a malformed answer.
    """
    if not callable(fn):
        raise CheckFailure(not_callable_message(ex.name, fn))
    seen: list = []

    def wrapper(**inputs):
        seen.append(None)  # one entry per case, in order, even when the case fails below
        snapshot = _clone(inputs)  # the student may edit the inputs in place
        out = fn(**inputs) if call is None else call(fn, inputs)
        seen[-1] = (snapshot, out)
        return out

    try:
        run_check(ex, wrapper, cases)
    except CheckFailure as failure:
        message = str(failure)
        if any(m.explanation in message for m in ex.misconceptions):
            raise
        case = re.search(r"\(case (\d+) of \d+\)", message)
        if case is None or int(case.group(1)) > len(seen) or seen[int(case.group(1)) - 1] is None:
            raise
        inputs, got = seen[int(case.group(1)) - 1]
        better = describe(inputs, got, ex.reference(**_clone(inputs)))
        if better is None:
            raise
        label = message.split(":", 1)[0]
        raise CheckFailure(f"{label}: {better}") from None
