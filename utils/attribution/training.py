"""Training a transcoder: pairs (MLP input, MLP output) from the model on the corpus, a TopK
transcoder fitted to them by Adam on the mean squared error of the predicted output.

The loop has chapter 05's shape (utils/sae/training.py): batch -> forward -> loss -> backward ->
remove the decoder gradient along each row -> Adam step -> renormalise decoder rows; the learning
rate decays linearly over the last fifth. A TopK transcoder needs no sparsity penalty (k fixes L0);
it does need a way back for features that stop firing: the AuxK loss of Gao et al. (2024) asks the
``aux_k`` largest pre-activations among the features dead for ``dead_steps`` steps to predict what
the live ones missed (weighted 1/32), which gives dead features a gradient again.

The pairs come from ``PairedActivations``, a small pool refilled with fresh text: chapter 05's
ActivationStore reads ONE hook, a transcoder needs two from the same forward pass.

    python -m utils.attribution train --layer 0     # the bundled transcoders (see __main__.py)
"""
from __future__ import annotations

import time

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from utils.attribution.transcoder import Transcoder, TranscoderConfig
from utils.data.dataset import batches
from utils.sae.metrics import fraction_variance_explained, l0


class PairedActivations:
    """Shuffled (x, y) = (ln2.hook_normalized, hook_mlp_out) rows of one layer, BOS dropped
    (``hook_in="blocks.L.hook_mlp_out"``: x = y, for an SAE on the MLP's output).

    Holds ``pool_size`` pairs; each is handed out once, then a fresh pool is drawn from new text.
    """

    def __init__(self, model, layer: int, batch_size: int = 512, pool_size: int = 65_536, seq_len: int = 128,
                 seed: int = 0, split: str = "train", hook_in: str | None = None):
        if pool_size < batch_size:
            raise ValueError(f"pool_size ({pool_size}) must be at least batch_size ({batch_size})")
        self.model, self.layer = model, layer
        self.hooks = (hook_in or f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        self.batch_size, self.pool_size = batch_size, pool_size
        self._windows = batches(split, 32, seq_len, torch.Generator().manual_seed(seed))
        self._shuffle = torch.Generator().manual_seed(seed + 1)
        self.tokens_processed = 0
        self._refill()

    @torch.no_grad()
    def pairs_for(self, tokens) -> tuple[Tensor, Tensor]:
        _, cache = self.model.run_with_cache(tokens, names_filter=list(set(self.hooks)), return_type=None)
        x, y = (cache[h][:, 1:].reshape(-1, cache[h].shape[-1]).float() for h in self.hooks)
        return x, y

    def _refill(self) -> None:
        xs, ys, have = [], [], 0
        while have < self.pool_size:
            x, y = self.pairs_for(next(self._windows))
            xs.append(x)
            ys.append(y)
            have += len(x)
        order = torch.randperm(have, generator=self._shuffle)[: self.pool_size]
        self.x, self.y = torch.cat(xs)[order], torch.cat(ys)[order]
        self.tokens_processed += have
        self._position = 0

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self._position + self.batch_size > self.pool_size:
            self._refill()
        rows = slice(self._position, self._position + self.batch_size)
        self._position += self.batch_size
        return self.x[rows], self.y[rows]


def transcoder_loss(y: Float[Tensor, "batch d_out"], y_hat: Float[Tensor, "batch d_out"]) -> Tensor:
    """Squared error summed over d_out, averaged over the batch."""
    return (y - y_hat).pow(2).sum(-1).mean()


@torch.no_grad()
def _project_and_renormalise(tc: Transcoder, after_step: bool) -> None:
    """Before the step: drop the decoder gradient along each row (it would only change the row's
    norm). After: put every row back on the unit sphere, so a feature's size lives in f alone."""
    if after_step:
        tc.W_dec /= tc.W_dec.norm(dim=1, keepdim=True)
    elif tc.W_dec.grad is not None:
        rows = tc.W_dec / tc.W_dec.norm(dim=1, keepdim=True)
        tc.W_dec.grad -= (tc.W_dec.grad * rows).sum(1, keepdim=True) * rows


def aux_loss(tc: Transcoder, x: Tensor, y: Tensor, y_hat: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """AuxK: the top ``aux_k`` dead features (by pre-activation) reconstruct the residual y - y_hat."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return y.new_zeros(())
    pre = tc.pre_activation(x).masked_fill(~dead, float("-inf"))
    values, index = pre.topk(min(aux_k, n_dead), dim=-1)
    f_aux = torch.zeros_like(pre).scatter_(-1, index, torch.relu(values))
    return transcoder_loss(y - y_hat.detach(), f_aux @ tc.W_dec)


def train_transcoder(cfg: TranscoderConfig, model, steps: int = 2000, batch_size: int = 512, lr: float = 2e-3,
                     pool_size: int = 65_536, progress: bool = True, log_every: int = 100, aux_k: int = 64,
                     dead_steps: int = 50) -> tuple[Transcoder, dict]:
    """Train a transcoder for MLP ``cfg.layer`` of ``model``; returns ``(transcoder, log)``."""
    torch.manual_seed(cfg.seed)
    store = PairedActivations(model, cfg.layer, batch_size, pool_size, seed=cfg.seed, hook_in=cfg.hook_in)
    tc = Transcoder(cfg)
    with torch.no_grad():  # start at the mean output: the bias explains what no feature needs to
        tc.W_dec /= tc.W_dec.norm(dim=1, keepdim=True)
        tc.W_enc.copy_(tc.W_dec.T)  # each feature starts reading the direction it writes
        tc.b_dec.copy_(store.y.mean(0))
    optimizer = torch.optim.Adam(tc.parameters(), lr=lr)
    decay_from = int(0.8 * steps)
    history, start = [], time.perf_counter()
    fired = torch.zeros(cfg.d_trans, dtype=torch.bool)
    since_fired = torch.zeros(cfg.d_trans, dtype=torch.long)
    for step in tqdm(range(steps), disable=not progress, desc=f"transcoder L{cfg.layer}"):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (steps - step) / max(1, steps - decay_from))
        x, y = store.next_batch()
        y_hat, f = tc(x)
        loss = transcoder_loss(y, y_hat)
        if aux_k:
            loss = loss + aux_loss(tc, x, y, y_hat, since_fired >= dead_steps, aux_k) / 32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _project_and_renormalise(tc, after_step=False)
        optimizer.step()
        _project_and_renormalise(tc, after_step=True)
        on = (f > 0).any(0)
        fired |= on
        since_fired = torch.where(on, 0, since_fired + 1)
        if (step + 1) % log_every == 0 or step == steps - 1:
            history.append({"step": step + 1, "loss": loss.item(),
                            "fve": fraction_variance_explained(y, y_hat.detach()).item(),
                            "l0": l0(f).item(), "alive": fired.float().mean().item()})
            fired.zero_()
    seconds = time.perf_counter() - start
    log = {"history": history, "seconds": seconds, "tokens": store.tokens_processed,
           "steps": steps, "batch_size": batch_size, "lr": lr}
    return tc.eval(), log
