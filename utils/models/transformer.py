"""A small decoder-only transformer with TransformerLens hook names and parameter layout.

Built on transformer_lens's ``HookedRootModule``/``HookPoint`` (present in both 3.9 and 4.x), so
``run_with_cache``, ``run_with_hooks`` and hook names such as ``blocks.0.attn.hook_pattern`` behave
as in TransformerLens, and a ``HookedTransformer`` state dict (W_Q of shape
[n_heads, d_model, d_head], ...) loads directly.

Written to be read: every activation a chapter looks at is computed with one visible einsum.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformer_lens import ActivationCache, FactoredMatrix
from transformer_lens.hook_points import HookPoint

try:  # transformer-lens 4.x moved it to the top level
    from transformer_lens import HookedRootModule
except ImportError:  # transformer-lens 3.x
    from transformer_lens.hook_points import HookedRootModule

from utils.models.config import ModelConfig

TextInput = Union[str, Sequence[str], torch.Tensor]


class LayerNorm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d, k = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, k))
        self.W_K = nn.Parameter(torch.empty(h, d, k))
        self.W_V = nn.Parameter(torch.empty(h, d, k))
        self.W_O = nn.Parameter(torch.empty(h, k, d))
        self.b_Q = nn.Parameter(torch.zeros(h, k))
        self.b_K = nn.Parameter(torch.zeros(h, k))
        self.b_V = nn.Parameter(torch.zeros(h, k))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)),
                             persistent=False)
        self.use_attn_result = False
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked, scaled
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos], softmax over keys
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], only if use_attn_result

    def forward(self, qk_input: Float[torch.Tensor, "batch pos d_model"],
                v_input: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bpd,hdk->bphk", qk_input, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hdk->bphk", qk_input, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hdk->bphk", v_input, self.W_V) + self.b_V)
        n = q.shape[1]
        scores = torch.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(self.cfg.d_head)
        scores = scores.masked_fill(~self.mask[:n, :n], float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # softmax over key positions
        z = self.hook_z(torch.einsum("bhqs,bshk->bqhk", pattern, v))
        if self.use_attn_result:
            result = self.hook_result(torch.einsum("bqhk,hkd->bqhd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return torch.einsum("bqhk,hkd->bqd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.approximate = "tanh" if cfg.act_fn == "gelu_new" else "none"
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(F.gelu(pre, approximate=self.approximate))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        use_ln = cfg.normalization_type == "LN"
        self.ln1 = LayerNorm(cfg) if use_ln else nn.Identity()
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if use_ln else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()

    def forward(self, resid: Float[torch.Tensor, "batch pos d_model"],
                shortformer_pos: Optional[Float[torch.Tensor, "batch pos d_model"]]):
        resid = self.hook_resid_pre(resid)
        normed = self.ln1(resid)
        # Shortformer: positions enter the queries and keys only, never the values or residual.
        qk_input = normed if shortformer_pos is None else normed + shortformer_pos
        resid = resid + self.hook_attn_out(self.attn(qk_input, normed))
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


# Held by every hooked run (run_with_hooks, run_with_cache), in any thread; re-entrant, since a hook may run
# the model again.
_HOOKED_RUNS = threading.RLock()


class HookedTinyTransformer(HookedRootModule):
    """Decoder-only transformer; state dict and hook names follow TransformerLens."""

    def __init__(self, cfg: ModelConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        if cfg.normalization_type == "LN":
            self.ln_final = LayerNorm(cfg)
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.unembed.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.init_weights()
        self.setup()  # registers every HookPoint under its dotted name

    def init_weights(self, seed: Optional[int] = None) -> None:
        """Normal(0, init_range) for matrices, zeros for biases, ones for LayerNorm scales."""
        generator = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith(".w"):
                    param.fill_(1.0)
                elif name.split(".")[-1].startswith("b"):
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * self.cfg.init_range)

    # ----- weights, stacked across layers as in TransformerLens -----
    @property
    def W_E(self) -> Float[torch.Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[torch.Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[torch.Tensor, "d_vocab"]:
        return self.unembed.b_U

    def _stack(self, name: str) -> torch.Tensor:
        return torch.stack([getattr(block.attn, name) for block in self.blocks])

    W_Q = property(lambda self: self._stack("W_Q"), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._stack("W_K"), doc="[n_layers, n_heads, d_model, d_head]")
    W_V = property(lambda self: self._stack("W_V"), doc="[n_layers, n_heads, d_model, d_head]")
    W_O = property(lambda self: self._stack("W_O"), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._stack("b_Q"))
    b_K = property(lambda self: self._stack("b_K"))
    b_V = property(lambda self: self._stack("b_V"))
    b_O = property(lambda self: self._stack("b_O"))

    @property
    def W_in(self) -> Float[torch.Tensor, "n_layers d_model d_mlp"]:
        self._require_mlp()
        return torch.stack([block.mlp.W_in for block in self.blocks])

    @property
    def W_out(self) -> Float[torch.Tensor, "n_layers d_mlp d_model"]:
        self._require_mlp()
        return torch.stack([block.mlp.W_out for block in self.blocks])

    def _require_mlp(self):
        if self.cfg.attn_only:
            raise ValueError("this model is attention-only: it has no MLP weights")

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q W_K^T per layer and head, kept factored: [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V W_O per layer and head (acting on row vectors): [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_V, self.W_O)

    def set_use_attn_result(self, use: bool) -> None:
        """Compute ``hook_result`` (each head's output in d_model) as TransformerLens does."""
        for block in self.blocks:
            block.attn.use_attn_result = use

    # ----- tokens and strings -----
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids instead of strings")
        return self.tokenizer

    def to_tokens(self, text: Union[str, Sequence[str]], prepend_bos: bool = True,
                  truncate: bool = True) -> Int[torch.Tensor, "batch pos"]:
        """Token ids [batch, pos]; a list of strings is right-padded with the BOS/pad id."""
        tok = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("to_tokens expects a string or a non-empty list of strings")
        rows = [([tok.bos_token_id] if prepend_bos else []) + tok.encode(t, add_special_tokens=False)
                for t in texts]
        if truncate:
            rows = [r[: self.cfg.n_ctx] for r in rows]
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(self.W_E.device)

    def to_string(self, tokens) -> Union[str, list[str]]:
        tok = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 0:
            tokens = tokens[None]
        if tokens.ndim == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    def to_str_tokens(self, text_or_tokens, prepend_bos: bool = True) -> list[str]:
        """One string per token (exact byte-level pieces, decoded)."""
        tok = self._require_tokenizer()
        if isinstance(text_or_tokens, str):
            ids = self.to_tokens(text_or_tokens, prepend_bos=prepend_bos)[0].tolist()
        else:
            ids = torch.as_tensor(text_or_tokens)
            if ids.ndim == 2:
                if ids.shape[0] != 1:
                    raise ValueError("to_str_tokens takes one sequence, got a batch")
                ids = ids[0]
            ids = ids.reshape(-1).tolist()
        return [tok.decode([i]) for i in ids]

    def to_single_token(self, string: str) -> int:
        ids = self.to_tokens(string, prepend_bos=False)[0]
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one")
        return int(ids[0])

    # ----- forward -----
    def _as_tokens(self, input: TextInput) -> torch.Tensor:
        if isinstance(input, torch.Tensor):
            tokens = input if input.ndim == 2 else input[None]
            if tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
        else:
            tokens = self.to_tokens(input)
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            raise ValueError(f"token ids must lie in [0, {self.cfg.d_vocab})")
        return tokens.long().to(self.W_E.device)

    def forward(self, input: TextInput, return_type: Optional[str] = "logits",
                loss_per_token: bool = False):
        """return_type: "logits", "loss" (next-token cross-entropy), "both", or None."""
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        tokens = self._as_tokens(input)
        n = tokens.shape[1]
        embed = self.hook_embed(self.W_E[tokens])
        # A copy, not a view of W_pos: a hook that edits its activation in place must not edit the weights.
        pos = self.hook_pos_embed(self.W_pos[:n].expand(tokens.shape[0], n, -1).clone())
        if self.cfg.positional_embedding_type == "shortformer":
            resid, shortformer_pos = embed, pos
        else:
            resid, shortformer_pos = embed + pos, None
        for block in self.blocks:
            resid = block(resid, shortformer_pos)
        if self.cfg.normalization_type == "LN":
            resid = self.ln_final(resid)
        if return_type is None:
            return None
        if return_type == "loss" and not loss_per_token:
            # Training's path: no logits for the last position (it predicts nothing), and one fused
            # cross-entropy; equal to lm_cross_entropy(logits, tokens) (tests/test_models.py).
            logits = resid[:, :-1] @ self.W_U + self.b_U
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        logits = resid @ self.W_U + self.b_U
        if return_type == "logits":
            return logits
        loss = lm_cross_entropy(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def run_with_hooks(self, *args, **kwargs):
        """Like TransformerLens. Hooks are the modules' state, so two threads running hooks on one model
        at once would each see the other's (the grader computes expected values in threads): hooked
        runs take one lock."""
        with _HOOKED_RUNS:
            return super().run_with_hooks(*args, **kwargs)

    def run_with_cache(self, *args, return_cache_object: bool = True, **kwargs):
        """Like TransformerLens: (output, ActivationCache) with every hook's activation."""
        with _HOOKED_RUNS:
            out, cache = super().run_with_cache(*args, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=kwargs.get("remove_batch_dim") is not True)
        return out, cache

    @torch.no_grad()
    def generate(self, input: Union[str, torch.Tensor], max_new_tokens: int = 20,
                 temperature: float = 1.0, top_k: Optional[int] = None, seed: Optional[int] = None,
                 stop_at_eos: bool = True, fwd_hooks=()) -> Union[str, torch.Tensor]:
        """Sample a continuation. temperature 0 is greedy. ``fwd_hooks`` apply at every step
        (use them to steer). Returns a string for string input, else tokens [batch, pos]."""
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if seed is None:  # draw from the global generator, so torch.manual_seed makes this repeatable
            seed = int(torch.randint(0, 2 ** 62, (1,)))
        generator = torch.Generator(device=self.W_E.device).manual_seed(seed)
        tokens = self._as_tokens(input)
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else 0
        for _ in range(max_new_tokens):
            window = tokens[:, -self.cfg.n_ctx:]
            logits = self.run_with_hooks(window, fwd_hooks=list(fwd_hooks))[:, -1]
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            finished |= nxt == eos
            if stop_at_eos and finished.all():
                break
        if isinstance(input, str):
            return self.to_string(tokens[0, 1:])  # drop the BOS that to_tokens added
        return tokens


def lm_cross_entropy(logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch pos"],
                     per_token: bool = False):
    """Mean next-token loss: position i predicts token i+1 (the last position predicts nothing)."""
    log_probs = logits[:, :-1].log_softmax(-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    return nll if per_token else nll.mean()
