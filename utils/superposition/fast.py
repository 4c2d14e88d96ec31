"""The opt-in fast path of ``train(..., fast=True)``: the loss gradients written out by hand.

Nothing here is needed to follow the chapter; ``training.train`` is plain autograd by default.
At these sizes (a few thousand parameters) autograd's per-operation bookkeeping costs about as
much as the arithmetic, and the written-out gradient needs about half the passes over the batch.
``tests/test_ch04_superposition.py`` proves this path equal to autograd: the gradients to rounding
error, and ``train(fast=True)`` against ``train()`` step for step. It covers the models without a
hidden ReLU (ReLU or linear output); the ReLU-hidden model always trains with autograd.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from utils.superposition.model import ToyModel


def loss_and_grads(
    W: Float[Tensor, "inst d_hidden feat"],
    b: Float[Tensor, "inst feat"],
    x: Float[Tensor, "inst batch feat"],
    importance: Float[Tensor, "inst feat"],
    relu_output: bool = True,
    with_loss: bool = True,
) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """Per-instance loss [inst] (None unless ``with_loss``) and its gradients dL/dW, dL/db, by hand.

    With M = W^T W, pre = x M + b, x' = ReLU(pre) and L = (1/B) sum I (x' - x)^2 (summed over
    instances):

        G     = dL/dpre = (2/B) I * (x' - x) * ReLU'(pre)        [inst, batch, feat]
        dL/db = sum over the batch of G
        dL/dM = x^T G
        dL/dW = W (dL/dM + dL/dM^T)                               (M = W^T W is used twice)

    The importance only scales columns, so it is applied to the small [feat, feat] and [feat]
    results, never to the whole batch.
    """
    batch = x.shape[1]
    pre = torch.baddbmm(b[:, None, :], x, W.transpose(1, 2) @ W)
    out = torch.relu(pre) if relu_output else pre
    err = out - x
    loss = None
    if with_loss:
        loss = (err.square().sum(1) * importance).sum(-1) / batch
    if relu_output:
        err = err * out.sign()  # ReLU'(pre) = 1 exactly where out > 0; sign(out) is that 0/1 mask, cheaply
    weight = (2 / batch) * importance[:, None, :]  # [inst, 1, feat]
    grad_M = torch.bmm(x.transpose(1, 2), err) * weight
    grad_W = torch.bmm(W, grad_M + grad_M.transpose(1, 2))
    grad_b = err.sum(1) * weight[:, 0]
    return loss, grad_W, grad_b


def covers(model: ToyModel) -> bool:
    """Whether the hand-written gradients apply to this model (no hidden ReLU)."""
    return not model.cfg.relu_hidden


def set_gradients(model: ToyModel, x: Tensor, with_loss: bool) -> Optional[Tensor]:
    """Write dL/dW and dL/db into ``model.W.grad`` and ``model.b.grad`` (replacing them) and return
    the per-instance loss (None unless ``with_loss``): what ``loss.sum().backward()`` would do."""
    with torch.no_grad():
        loss, model.W.grad, model.b.grad = loss_and_grads(
            model.W, model.b, x, model.importance, model.cfg.relu_output, with_loss=with_loss)
    return loss


def sampler(feature_probability: Float[Tensor, "inst feat"]) -> Callable[[int, torch.Generator], Tensor]:
    """``generate_batch`` with its checks and its two constants 1/p and S/p hoisted out of the loop:
    the same numbers from the same generator, a little cheaper per step."""
    p = feature_probability[:, None, :]
    inv_p, minus_s_over_p = 1 / p, -(1 - p) / p

    def sample(batch_size: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(p.shape[0], batch_size, p.shape[2], generator=generator)
        return torch.addcmul(minus_s_over_p, u, inv_p).clamp_min_(0)

    return sample
