"""A faster training loss for ``HookedTinyTransformer``: the same number, computed for speed.

``fast_loss(model, tokens)`` equals ``model(tokens, return_type="loss")`` (up to float rounding;
tests/test_train_fast.py) and reads the model's own parameters, so the optimizer, checkpoints and
saved weights are those of the plain model. ``train(cfg, fast=True)`` uses it. The model's forward
stays the readable reference; this module trades readability for speed, where the time goes:

- The unembedding and its cross-entropy (d_vocab 4096 against d_model 128) dominate a step.
  ``unembed_cross_entropy`` computes the logits a few hundred rows at a time, so each chunk stays in
  cache, and forms the gradient (softmax - one-hot) by hand in the same pass: the full
  [tokens, d_vocab] logits and their log-softmax are never stored, nor read back by a backward.
- Attention: one matmul for the query, key and value projections, and
  ``scaled_dot_product_attention`` with ``is_causal`` instead of scores, mask, softmax and pattern
  as separate tensors. Shortformer positions enter the queries and keys only, as in the model.
- No HookPoints (each is a Python call per activation), 2-D residual stream, fused LayerNorm.

Measured on one CPU thread (2026-12-04, a shared 2-core AMD EPYC, torch 2.13, CPU ms per training
step, median of 6 alternating rounds, attn-only-2l / gelu-1l, before the chunks shared one buffer,
which took about 15% more off the loss): the plain step 787 / 618, this one 472 / 370. Undoing one
idea at a time: the full [rows, d_vocab] logits with F.cross_entropy 644 / 493; attention as
einsums, mask and softmax 573 / 379 (8 heads gain more than 4); separate Q, K, V projections
476 / 376 (no gain: kept fused as it is no more code); the fused AdamW no gain beyond noise (not
used); torch.backends.mkldnn off: no change (float32 matmuls go to MKL). torch.compile of the plain
model (inductor, CPU) took 169 s to compile gelu-1l, then ran forward + backward in 0.42 s against
0.53 s eager and 0.30-0.37 s for this path: not worth it for runs of minutes.

A model with hooks attached is refused: this path would silently skip them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.models.transformer import HookedTinyTransformer

# Rows of logits per chunk: 256 x 4096 floats (4 MB) stays in cache; chunks of 128-1024 rows took
# within a few percent of each other (the loss's CPU time, one thread).
CHUNK_ROWS = 256


def _chunked_cross_entropy(x, W_U, b_U, targets, chunk_rows: int, want_grad: bool):
    """The mean loss and, with ``want_grad``, its gradients for x, W_U and b_U, chunk by chunk."""
    n = x.shape[0]
    nll = x.new_empty(n)
    dx = dW = db = None
    if want_grad:
        dx, dW, db = torch.empty_like(x), torch.zeros_like(W_U), torch.zeros_like(b_U)
    # One buffer for every chunk: logits, then (in place) probabilities, then the logits' gradient.
    # Fresh 4 MB tensors per chunk cost about 15% of the loss's time (new pages to fault in).
    buffer = x.new_empty(min(n, chunk_rows), W_U.shape[1])
    all_rows = torch.arange(buffer.shape[0], device=x.device)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        xc, tc, rows = x[lo:hi], targets[lo:hi], all_rows[:hi - lo]
        probs = torch.addmm(b_U, xc, W_U, out=buffer[:hi - lo])
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)  # row-wise softmax, in place
        p_target = probs[rows, tc]
        nll[lo:hi] = -p_target.log()
        tiny = p_target < 1e-30  # -log(p) loses precision there (inf at 0): recompute those rows exactly
        if tiny.any():
            logits = torch.addmm(b_U, xc[tiny], W_U)
            nll[lo:hi][tiny] = torch.logsumexp(logits, -1) - logits.gather(-1, tc[tiny, None])[:, 0]
        if want_grad:
            probs[rows, tc] -= 1.0  # d(nll)/d(logits) = softmax - one-hot
            torch.mm(probs, W_U.t(), out=dx[lo:hi])
            dW.addmm_(xc.t(), probs)
            db += probs.sum(0)
    if want_grad:  # the loss is the mean over rows
        dx.div_(n), dW.div_(n), db.div_(n)
    return nll.mean(), (dx, dW, db)


class UnembedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ W_U + b_U`` against ``targets``, never storing the logits.

    The gradients are formed during the forward pass, chunk by chunk, and the backward only scales
    them by the incoming gradient (1 for a loss that is backpropagated directly).
    """

    @staticmethod
    def forward(ctx, x, W_U, b_U, targets, chunk_rows: int):
        loss, grads = _chunked_cross_entropy(x, W_U, b_U, targets, chunk_rows, want_grad=True)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dW, db = ctx.saved_tensors
        return dx * grad_loss, dW * grad_loss, db * grad_loss, None, None


def unembed_cross_entropy(x: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor, targets: torch.Tensor,
                          chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``F.cross_entropy(x @ W_U + b_U, targets)`` for x [rows, d_model], without the logits."""
    if x.ndim != 2 or targets.shape != x.shape[:1]:
        raise ValueError(f"x must be [rows, d_model] and targets [rows], got {tuple(x.shape)} "
                         f"and {tuple(targets.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if torch.is_grad_enabled() and (x.requires_grad or W_U.requires_grad or b_U.requires_grad):
        return UnembedCrossEntropy.apply(x, W_U, b_U, targets, chunk_rows)
    return _chunked_cross_entropy(x, W_U, b_U, targets, chunk_rows, want_grad=False)[0]


def _layer_norm(ln, x):
    return F.layer_norm(x, x.shape[-1:], ln.w, ln.b, ln.eps)


def _attention(attn, x, qk_extra, batch: int, n: int):
    """The attention layer on x [batch * n, d_model]; ``qk_extra`` [n, 2 * n_heads * d_head] is the
    shortformer positions' contribution to the queries and keys (None for standard positions)."""
    h, k = attn.cfg.n_heads, attn.cfg.d_head
    # [n_heads, d_model, d_head] x 3 -> [d_model, 3 * n_heads * d_head], columns ordered (q/k/v, head, d_head)
    W = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).permute(1, 0, 2).reshape(x.shape[-1], 3 * h * k)
    b = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(3 * h * k)
    qkv = torch.addmm(b, x, W).view(batch, n, 3 * h * k)
    if qk_extra is not None:  # (normed + pos) @ W = normed @ W + pos @ W, the second per position only
        qkv = qkv + F.pad(qk_extra, (0, h * k))
    q, key, v = qkv.view(batch, n, 3, h, k).permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, head, pos, d_head]
    z = F.scaled_dot_product_attention(q, key, v, is_causal=True)
    z = z.transpose(1, 2).reshape(batch * n, h * k)
    return torch.addmm(attn.b_O, z, attn.W_O.reshape(h * k, -1))


def _mlp(mlp, x):
    pre = torch.addmm(mlp.b_in, x, mlp.W_in)
    return torch.addmm(mlp.b_out, F.gelu(pre, approximate=mlp.approximate), mlp.W_out)


def fast_loss(model: HookedTinyTransformer, tokens: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` [batch, pos]: the value (and the
    gradients) of ``model(tokens, return_type="loss")``, faster. Hooks are not run, so a model
    with hooks attached is refused."""
    if any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values()):
        raise ValueError("fast_loss skips HookPoints, and this model has hooks attached: "
                         "use model(tokens, return_type='loss')")
    cfg = model.cfg
    if tokens.ndim != 2 or tokens.is_floating_point() or tokens.is_complex() or not 2 <= tokens.shape[1] <= cfg.n_ctx:
        raise ValueError(f"tokens must be an integer tensor [batch, pos] with 2 <= pos <= n_ctx={cfg.n_ctx}, "
                         f"got {tuple(tokens.shape)} {tokens.dtype}")
    tokens = tokens.long()
    batch, n = tokens.shape
    resid = F.embedding(tokens, model.W_E).view(batch * n, cfg.d_model)
    pos = model.W_pos[:n]
    shortformer = cfg.positional_embedding_type == "shortformer"
    if not shortformer:
        resid = (resid.view(batch, n, -1) + pos).view(batch * n, -1)
    for block in model.blocks:
        normed = _layer_norm(block.ln1, resid) if cfg.normalization_type == "LN" else resid
        qk_extra = None
        if shortformer:
            attn, hk = block.attn, cfg.n_heads * cfg.d_head
            W_QK = torch.cat([attn.W_Q, attn.W_K]).permute(1, 0, 2).reshape(cfg.d_model, 2 * hk)
            qk_extra = pos @ W_QK
        resid = resid + _attention(block.attn, normed, qk_extra, batch, n)
        if not cfg.attn_only:
            normed = _layer_norm(block.ln2, resid) if cfg.normalization_type == "LN" else resid
            resid = resid + _mlp(block.mlp, normed)
    if cfg.normalization_type == "LN":
        resid = _layer_norm(model.ln_final, resid)
    # Position i predicts token i + 1; the last position predicts nothing.
    x = resid.view(batch, n, -1)[:, :-1].reshape(-1, cfg.d_model)
    return unembed_cross_entropy(x, model.W_U, model.b_U, tokens[:, 1:].reshape(-1), chunk_rows)
