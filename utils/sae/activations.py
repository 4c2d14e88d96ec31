"""Activations on tap: run the model over the corpus and serve shuffled batches of one hook's output.

An SAE learns from millions of activation vectors, one per token. Storing them all would take
gigabytes, and serving them in corpus order would feed the optimizer long runs of correlated
tokens (one document at a time). So the store keeps a buffer of ``buffer_size`` activations in
random order and hands out batches from it; once half of it has been handed out, it overwrites
exactly that used half with activations of fresh text and shuffles the whole buffer again. Every
activation is handed out at most once, batches mix tokens from many documents, and memory stays
at one buffer.

The model runs under ``torch.no_grad`` and stops as soon as the hook has fired: for an MLP hook
the unembedding (128 x 4096 per token, the model's biggest matmul) is never computed.
"""
from __future__ import annotations

import time
from typing import Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.data.dataset import batches


class _StopForward(Exception):
    """Raised by the capture hook once it has the activation: the rest of the forward is not needed."""


class ActivationStore:
    """A shuffled buffer of ``hook_name`` activations of ``model`` on the training split.

    Args:
        model: a hooked model (e.g. ``load_model("gelu-1l")``); it is only run, never changed.
        hook_name: the hook point to read, e.g. ``"blocks.0.mlp.hook_post"``.
        batch_size: activations per ``next_batch()``.
        buffer_size: activations kept in the buffer (at least 2 * batch_size).
        seq_len: tokens per sequence fed to the model; position 0 is BOS and its activation is
            dropped (every row has the same BOS token, so its activation is the same outlier).
        model_batch_size: sequences per forward pass.
        device: where the buffer lives (the SAE's device); default the model's.
        seed: seeds the choice of text windows and the shuffles: same seed, same batches.
        split: corpus split, ``"train"`` by default.
    """

    def __init__(self, model, hook_name: str, batch_size: int = 1024, buffer_size: int = 131_072,
                 seq_len: int = 128, model_batch_size: int = 64, device: Union[str, torch.device, None] = None,
                 seed: int = 0, split: str = "train"):
        if batch_size < 1 or model_batch_size < 1:
            raise ValueError("batch_size and model_batch_size must be positive")
        if buffer_size < 2 * batch_size:
            raise ValueError(f"buffer_size ({buffer_size}) must be at least 2 * batch_size ({2 * batch_size}): "
                             "half the buffer is handed out between refills")
        if not 2 <= seq_len <= model.cfg.n_ctx:
            raise ValueError(f"seq_len must lie in [2, n_ctx={model.cfg.n_ctx}], got {seq_len}")
        if hook_name not in model.hook_dict:
            raise ValueError(f"model has no hook point {hook_name!r}")
        self.model, self.hook_name = model, hook_name
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.seq_len, self.model_batch_size = seq_len, model_batch_size
        self.model_device = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else self.model_device
        # Two generators: text windows (CPU, like the corpus) and shuffles (on the buffer's device).
        self._text_generator = torch.Generator().manual_seed(seed)
        self._shuffle_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._windows = batches(split, model_batch_size, seq_len, self._text_generator)
        self.tokens_processed = 0  # activations produced by the model so far
        self.refills = 0
        # The width of the hook, from a 2-token probe that leaves the window stream untouched.
        first = self.activations_for(torch.zeros(1, 2, dtype=torch.long))
        self.d_in = first.shape[-1]
        self.buffer = torch.empty(buffer_size, self.d_in, device=self.device, dtype=first.dtype)
        self._fill(buffer_size)

    # ------------------------------------------------------------------ running the model
    @torch.no_grad()
    def activations_for(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch*(pos-1) d_in"]:
        """The hook's activations for these token rows, BOS position dropped, flattened to rows."""
        captured = {}

        def capture(activation, hook):
            captured["act"] = activation
            raise _StopForward

        with self.model.hooks(fwd_hooks=[(self.hook_name, capture)]):
            try:
                self.model(tokens.to(self.model_device), return_type=None)
            except _StopForward:
                pass
        act = captured["act"][:, 1:]
        return act.reshape(-1, act.shape[-1]).to(self.device)

    def _fresh(self, n: int) -> Float[Tensor, "n d_in"]:
        """n activations of new text: whole model batches, the last one cut to the rows it needs."""
        per_row = self.seq_len - 1
        chunks, have = [], 0
        while have < n:
            tokens = next(self._windows)
            rows = min(len(tokens), -(-(n - have) // per_row))
            act = self.activations_for(tokens[:rows])
            chunks.append(act)
            have += len(act)
        self.tokens_processed += have
        return torch.cat(chunks)[:n]

    # ------------------------------------------------------------------ the buffer
    def _fill(self, n_used: int) -> None:
        """Overwrite the first n_used rows (the ones handed out) with fresh activations, reshuffle all."""
        if n_used:
            self.buffer[:n_used] = self._fresh(n_used)
        order = torch.randperm(self.buffer_size, generator=self._shuffle_generator, device=self.device)
        self.buffer = self.buffer[order]
        self._position = 0
        self.refills += 1

    def next_batch(self) -> Float[Tensor, "batch d_in"]:
        """The next ``batch_size`` activations, never handed out before."""
        if self._position + self.batch_size > self.buffer_size // 2:
            self._fill(self._position)
        batch = self.buffer[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        """n activations from the buffer, in random order, WITHOUT consuming them (a copy).

        For statistics that do not need their own data: the b_dec initialisation and the inputs
        whose losses decide where dead features are resampled.
        """
        if not 1 <= n <= self.buffer_size:
            raise ValueError(f"can sample 1 to buffer_size={self.buffer_size} activations, asked for {n}")
        # The buffer is already in random order, so any n rows are a random sample.
        return self.buffer[-n:].clone()

    # ------------------------------------------------------------------ speed
    def measure_throughput(self, n_batches: int = 20) -> dict:
        """Time ``n_batches`` calls of ``next_batch`` (refills included) and one model-only run.

        Returns activations per second served by the store, and produced by the model alone.
        Consumes data from the store: use a separate store, or accept the skipped batches.
        """
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start, processed = time.perf_counter(), self.tokens_processed
        for _ in range(n_batches):
            self.next_batch()
        sync()
        served_s = time.perf_counter() - start
        start = time.perf_counter()
        act = self._fresh(max(self.batch_size, self.model_batch_size * (self.seq_len - 1)))
        sync()
        model_s = time.perf_counter() - start
        return {
            "served_per_s": n_batches * self.batch_size / served_s,
            "model_activations_per_s": len(act) / model_s,
            "model_activations_during_serving": self.tokens_processed - processed - len(act),
        }
