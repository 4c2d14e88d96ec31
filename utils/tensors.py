"""Tensor helpers every chapter uses: shape checks that fail in words, the causal mask, a kron that
works on transposed views, and a FactoredMatrix test. One copy, public, imported from here."""
from __future__ import annotations

from typing import Sequence

import torch

MASKED = float("-inf")  # the score of a key a query may not attend to


def require_ndim(tensor, name: str, ndim: int | Sequence[int]) -> torch.Tensor:
    """Fail early, in words, on the usual slips (a numpy array, a missing batch axis)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if tensor.ndim not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                         f"got shape {tuple(tensor.shape)}")
    return tensor


def require_equal(a: int, b: int, what: str) -> None:
    """Two sizes that must agree (``what`` names them in the error)."""
    if a != b:
        raise ValueError(f"{what}: {a} != {b}")


def causal_mask(n: int, device=None) -> torch.Tensor:
    """[n, n] bool, True where query i may attend to key j (j <= i): the lower triangle, diagonal
    included, since a position may read from itself."""
    if n < 1:
        raise ValueError(f"need at least one position, got {n}")
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.kron on contiguous copies: some torch releases (2.13 among them) raise "view size is
    not compatible" on transposed views."""
    return torch.kron(a.contiguous(), b.contiguous())


def is_factored(value) -> bool:
    """FactoredMatrix of transformer-lens 3.x or 4.x (duck-typed: both keep .A and .B)."""
    return hasattr(value, "A") and hasattr(value, "B") and not isinstance(value, torch.Tensor)
