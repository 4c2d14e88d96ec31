"""Training a stack of toy models: Adam on the importance-weighted loss, with fresh data every step.

``train`` is plain autograd. ``train(..., fast=True)`` swaps in the hand-written gradients of
``utils.superposition.fast`` (the same numbers to rounding error, for the models without a hidden
ReLU); the chapter's notebook uses the default.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition import fast as fast_path
from utils.superposition.exercises import generate_batch, per_instance_loss
from utils.superposition.model import ToyModel


def train(
    model: ToyModel,
    steps: int = 10_000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = False,
    data: Optional[Callable[[int, torch.Generator], Tensor]] = None,
    fast: bool = False,
) -> Float[Tensor, "n_logs inst"]:
    """Adam on the importance-weighted loss with fresh data every step; returns the per-instance
    loss at step 0, every ``log_every`` steps and at the last step.

    Deterministic for a given seed and torch thread count. ``data(batch_size, generator) -> x
    [inst, batch, feat]`` replaces the independent features of ``model.feature_probability``
    (e.g. ``generate_correlated_batch`` with fixed groups); None, the default, is generate_batch's
    data. ``fast=True`` computes the gradients by hand (``utils.superposition.fast``) instead of by
    autograd, for the models it covers (not the ReLU-hidden one).
    """
    if steps < 1 or batch_size < 1 or not lr > 0 or log_every < 1:
        raise ValueError(f"need steps, batch_size, log_every >= 1 and lr > 0; got steps={steps}, "
                         f"batch_size={batch_size}, lr={lr}, log_every={log_every}")
    use_fast = fast and fast_path.covers(model)
    if data is None:
        if use_fast:
            data = fast_path.sampler(model.feature_probability)
        else:
            def data(n: int, generator: torch.Generator) -> Tensor:
                return generate_batch(n, model.feature_probability, generator)
    g = torch.Generator().manual_seed(seed)
    # fused=True runs Adam as one kernel: with two tiny parameters the per-op overhead is the cost.
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train {model.cfg.n_instances} instances", leave=False)
    for step in range(steps):
        log = step % log_every == 0 or step == steps - 1
        x = data(batch_size, g)
        if use_fast:
            loss = fast_path.set_gradients(model, x, with_loss=log)
        else:
            with torch.enable_grad():
                loss = per_instance_loss(model(x), x, model.importance)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
        opt.step()
        if log:
            history.append(loss.detach())
            if bar is not None:
                bar.set_postfix(loss=f"{loss.sum().item():.4g}")
                bar.update(step + 1 - bar.n)
    if bar is not None:
        bar.close()
    return torch.stack(history)
