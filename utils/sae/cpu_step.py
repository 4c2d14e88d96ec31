"""The L1 and TopK training step on a CPU, with its gradients written out by hand: an opt-in.

``sae(x)`` then ``loss.backward()`` is the reference step, and what ``train_sae`` runs unless the
config says ``fast_cpu=True`` (the GPU, MPS, JumpReLU and AuxK always take it). On a CPU its time
should go to its five matmuls; autograd adds passes over the [batch, d_sae] activations (the L1
term's gradient materialised and added, ReLU's backward, counts of non-zeros) that cost ~25% of a
step at d_in 512, d_sae 2048, batch 1024. Here each of those is one pass or none, and once f is
mostly zeros (a trained SAE fires ~1-2% of its features per token) four of the five matmuls run
through f's non-zeros only.

In the row layout (z = (x - b_dec) @ W_enc + b_enc, x̂ = f @ W_dec + b_dec), with
g = dL/dx̂ = 2 (x̂ - x) / n and the loss L = ||x - x̂||² / n + λ Σ f / n (λ = 0 for TopK):

    dL/df       = g @ W_dec.T + λ / n                   only where f > 0 matters:
    dL/dz       = dL/df  where f > 0, else 0            ReLU and TopK pass no gradient elsewhere
    dL/dW_dec   = f^T g                                  [d_sae, d_in]
    dL/db_enc   = Σ_rows dL/dz
    dL/dW_enc   = (x - b_dec)^T dL/dz                   = x^T dL/dz - b_dec ⊗ dL/db_enc
    dL/db_dec   = Σ_rows g - W_enc @ dL/db_enc          (b_dec enters x̂ and, subtracted, z)

Every gradient is computed contiguous in its parameter's layout (W_enc [d_in, d_sae], W_dec
[d_sae, d_in], see ``utils.sae.model``): the layout torch's fused Adam reads it in.

tests/test_ch05_sae.py checks every gradient against autograd's in float64, on the dense and the
sparse path, for both architectures.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

# torch warns once per process that CSR support is "beta"; the kernels used here are tested
# against autograd in tests/test_ch05_sae.py, so in a notebook the warning would only be noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# Below this fraction of non-zeros in f, the sparse path is faster. Timed at d_in 512, d_sae 2048,
# batch 1024, one thread: dense ~165 ms at any density; sparse 154 ms at 10%, 100 at 5-7%, 74 at 2%
# (of which 33 ms is the encoder's dense matmul and 9 ms the conversion of f to CSR).
SPARSE_MAX_DENSITY = 0.10


class StepResult(NamedTuple):
    losses: dict  # {"loss", "mse", "sparsity"}: 0-dim tensors, as SparseAutoencoder.forward returns
    n_active: Tensor  # 0-dim: non-zero entries of f over the whole batch
    fired: Tensor  # [d_sae] bool: features that fired on at least one row


def applies(sae, device: torch.device) -> bool:
    """Whether this step CAN replace autograd's: an L1 or TopK SAE without AuxK, on the CPU (the AuxK
    loss is left to autograd). ``train_sae`` uses it only when ``cfg.fast_cpu`` also asks for it."""
    return (sae.cfg.architecture in ("l1", "topk") and getattr(sae.cfg, "aux_k", None) is None
            and torch.device(device).type == "cpu")


def _set_grad(param: Tensor, grad: Tensor) -> None:
    """``param.grad = grad`` in param's memory layout: torch's fused Adam reads a gradient as if it
    had its parameter's strides (a transposed parameter with a row-major gradient trains on garbage).
    The gradients below are computed in that layout already; this copies only if one is not."""
    param.grad = grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


def _buffer(workspace: Optional[dict], name: str, shape: tuple, like: Tensor) -> Optional[Tensor]:
    """The workspace's reusable tensor ``name`` (made on first use), or None (torch allocates)."""
    if workspace is None:
        return None
    buf = workspace.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype:
        buf = workspace[name] = torch.empty(shape, dtype=like.dtype)
    return buf


@torch.no_grad()
def step_gradients_(sae, x: Tensor, sparsity_coeff: float, workspace: Optional[dict] = None) -> StepResult:
    """Set ``p.grad`` of every parameter of ``sae`` to the loss's gradient at batch ``x``.

    The same numbers as ``sae(x, sparsity_coeff)[2]["loss"].backward()`` (to rounding).

    ``workspace``: a dict kept between steps (the trainer passes one). The [batch, d_sae]
    intermediates and the weight gradients are then written into the same memory every step
    instead of fresh allocations: large fresh tensors come from the OS as new pages, and faulting
    them in cost ~10% of a dense step here. The gradients set on the parameters live in it, so
    they are overwritten by the next call.
    """
    if not applies(sae, x.device) or x.dim() != 2:
        raise ValueError(f"the CPU step handles 'l1' and 'topk' SAEs on [batch, d_in] CPU batches; got "
                         f"architecture {sae.cfg.architecture!r}, x of shape {tuple(x.shape)} on {x.device}")
    sae._check_input(x)
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec  # [d_in, d_sae], [d_sae, d_in]
    n = len(x)

    d_sae, d_in = W_dec.shape
    z = torch.addmm(b_enc - b_dec @ W_enc, x, W_enc,  # (x - b_dec) @ W_enc + b_enc, bias folded
                    out=_buffer(workspace, "z", (n, d_sae), x))
    f = z.relu_() if sae.cfg.architecture == "l1" else sae.activation(z)
    active = torch.sign(f, out=_buffer(workspace, "active", (n, d_sae), x))  # 1 where f > 0, else 0 (f >= 0)
    n_active = active.sum()
    sparse = n_active.item() < SPARSE_MAX_DENSITY * f.numel()
    if sparse:
        f_csr = f.to_sparse_csr()  # the non-zeros of f, row by row
        fired = torch.zeros(f.shape[1], dtype=torch.bool).index_fill_(0, f_csr.col_indices(), True)
    else:
        fired = active.amax(0) > 0

    x_hat = torch.sparse.mm(f_csr, W_dec).add_(b_dec) if sparse else torch.addmm(b_dec, f, W_dec)  # f @ W_dec
    err = x_hat.sub_(x)
    mse = err.pow(2).sum() / n
    l1 = f.sum() / n
    c = sparsity_coeff / n if sae.cfg.architecture == "l1" else 0.0
    g = err.mul_(2 / n)  # dL/dx̂

    if sparse:
        # dL/dz at f's non-zeros only (everywhere else it is 0): a CSR matrix with f's pattern.
        grad_z = torch.sparse.sampled_addmm(f_csr, g, W_dec.T, beta=0.0)  # g @ W_dec.T at f's non-zeros
        values = grad_z.values()
        values.add_(c)
        grad_b_enc = torch.zeros_like(b_enc).index_add_(0, grad_z.col_indices(), values)
        grad_enc = torch.sparse.mm(grad_z.t(), x).T.contiguous()  # x^T dL/dz, then minus the b_dec term
        grad_dec = torch.sparse.mm(f_csr.t(), g)  # f^T g
    else:
        grad_z = torch.addmm(torch.tensor([c], dtype=g.dtype), g, W_dec.T,
                             out=_buffer(workspace, "grad_z", (n, d_sae), x)).mul_(active)
        grad_b_enc = grad_z.sum(0)
        grad_enc = torch.mm(x.T, grad_z, out=_buffer(workspace, "grad_W_enc", (d_in, d_sae), x))
        grad_dec = torch.mm(f.T, g, out=_buffer(workspace, "grad_W_dec", (d_sae, d_in), x))

    _set_grad(W_enc, grad_enc.addr_(b_dec, grad_b_enc, alpha=-1))
    _set_grad(b_enc, grad_b_enc)
    _set_grad(W_dec, grad_dec)
    _set_grad(b_dec, g.sum(0).sub_(W_enc @ grad_b_enc))

    sparsity = l1 if sae.cfg.architecture == "l1" else torch.zeros((), dtype=x.dtype)
    losses = {"loss": mse + sparsity_coeff * sparsity, "mse": mse, "sparsity": sparsity}
    return StepResult(losses, n_active, fired)
