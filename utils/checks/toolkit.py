"""The public toolkit the chapters' checks are written with: ``misconception`` (a named wrong
implementation), seeded generators (``rng``, ``randint``, ``random_pattern``, random circuits), ``unit_columns`` /
``unit_rows``, the bundled 1-layer model, and ``run_described`` / ``describe_parts`` for answers made of several named
parts (it finds the failing case from ``CheckFailure.case_index``)."""
from __future__ import annotations

import math
from functools import lru_cache, wraps
from typing import Callable, Optional, Sequence

import torch

from utils.checks.core import (
    Cases,
    CheckFailure,
    Exercise,
    Misconception,
    clone_inputs,
    describe_difference,
    not_callable_message,
    outputs_match,
    run_check,
)
from utils.tensors import causal_mask

INF = float("inf")


def nan_as_inf(fn):
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


def misconception(name: str, explanation: str, implementation) -> Misconception:
    return Misconception(name, explanation, nan_as_inf(implementation))


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True)


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=1, keepdim=True)


def random_pattern(g: torch.Generator, *shape_and_n: int) -> torch.Tensor:
    """Random causal attention patterns [..., n, n]: rows sum to 1, zero above the diagonal."""
    *lead, n = shape_and_n
    scores = torch.randn(*lead, n, n, generator=g) * 1.5
    return scores.masked_fill(~causal_mask(n), -INF).softmax(-1)


@lru_cache(maxsize=1)
def attn_only_1l():
    from utils.models import load_model

    return load_model("attn-only-1l", device="cpu")


def circuit_sizes(g: torch.Generator, square: bool) -> tuple[int, int, int, int]:
    """(heads, d_vocab, d_model, d_head) for a random circuit case. Square sizes (all equal) let
    every transposition still run, so a check can name it; otherwise d_head < d_model < d_vocab."""
    h = randint(g, 1, 3)
    if square:
        vocab = d = k = randint(g, 4, 7)
    else:
        d = randint(g, 6, 10)
        k, vocab = randint(g, 2, d - 2), d + randint(g, 3, 9)
    return h, vocab, d, k


def random_ov_weights(g: torch.Generator, square: bool) -> dict:
    """Random {W_E, W_V, W_O, W_U} (W_V, W_O with a head axis), scaled so products stay O(1)."""
    h, vocab, d, k = circuit_sizes(g, square)
    return dict(W_E=torch.randn(vocab, d, generator=g), W_V=torch.randn(h, d, k, generator=g) / math.sqrt(d),
                W_O=torch.randn(h, k, d, generator=g) / math.sqrt(k),
                W_U=torch.randn(d, vocab, generator=g) / math.sqrt(d))


# --------------------------------------------------------------------------- describing tuple answers


def describe_parts(names: Sequence[str], rtol: float, atol: float):
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
                return f"{name} is wrong. {describe_difference(g, e, inputs, rtol=rtol, atol=atol)}"
            return f"{name} is wrong: {describe_difference(g, e, inputs, rtol=rtol, atol=atol)}"
        return None
    return describe




def run_described(ex: Exercise, fn, cases: Cases, describe: Callable,
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
        snapshot = clone_inputs(inputs)  # the student may edit the inputs in place
        out = fn(**inputs) if call is None else call(fn, inputs)
        seen[-1] = (snapshot, out)
        return out

    try:
        run_check(ex, wrapper, cases)
    except CheckFailure as failure:
        message, i = str(failure), failure.case_index
        if any(m.explanation in message for m in ex.misconceptions):
            raise
        if i is None or i >= len(seen) or seen[i] is None:
            raise
        inputs, got = seen[i]
        better = describe(inputs, got, ex.reference(**clone_inputs(inputs)))
        if better is None:
            raise
        label = message.split(":", 1)[0]
        raise CheckFailure(f"{label}: {better}", case_index=i) from None
