"""The transcoder: a sparse replacement for one MLP layer (Dunefsky et al. 2024; Ameisen et al. 2025).

An SAE reconstructs the activation it reads. A transcoder reads the MLP's INPUT and predicts the
MLP's OUTPUT, through a sparse, wide layer of features:

    f     = TopK(ReLU(x @ W_enc + b_enc))        x: blocks.L.ln2.hook_normalized   [.., d_model]
    y_hat = f @ W_dec + b_dec                    y: blocks.L.hook_mlp_out          [.., d_model]

Layout as SAELens and chapter 05 (every weight [d_in, d_out]): ``W_enc [d_in, d_trans]`` (column i:
what feature i reads), ``W_dec [d_trans, d_out]`` (row i: what feature i writes into the residual
stream). Unlike an SAE, there is no ``- b_dec`` before encoding: b_dec lives in the OUTPUT space,
the input is a different vector.

Why the input is ``ln2.hook_normalized`` (the MLP's own input) and not ``hook_resid_mid``: the
transcoder then replaces exactly the function the MLP computes, and on a prompt the LayerNorm in
front of it is frozen (its scale fixed), which makes resid_mid -> transcoder input a fixed linear
map that the attribution graph folds into every edge. Reading resid_mid would make the transcoder
learn the LayerNorm's division too, which is not linear and could not be frozen.

TopK (Gao et al. 2024) rather than JumpReLU: no threshold to estimate, a fixed L0, and on a prompt
a feature is on or off. In the graph, an edge ends at a feature's PRE-activation (its encoder
input), so the choice of activation function never enters an edge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from jaxtyping import Float
from torch import Tensor

from utils.models.config import config_from_dict
from utils.sae.model import topk_relu  # the TopK activation is chapter 05's, written once


@dataclass
class TranscoderConfig:
    layer: int = 0  # which MLP it replaces
    d_in: int = 128
    d_trans: int = 1024
    d_out: int = 128
    k: int = 16  # active features per token
    model_name: str = "gelu-2l"
    seed: int = 0
    architecture: str = "topk"  # read by chapter 06's feature_acts (it runs encode for non-L1 dictionaries)
    reads: str = "mlp_in"  # "mlp_out": the same machine as an SAE on the MLP's output (for comparison)

    def __post_init__(self):
        for name in ("d_in", "d_trans", "d_out", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.k > self.d_trans:
            raise ValueError(f"k={self.k} cannot exceed d_trans={self.d_trans}")
        if self.reads not in ("mlp_in", "mlp_out"):
            raise ValueError(f"reads must be 'mlp_in' (a transcoder) or 'mlp_out' (an SAE), got {self.reads!r}")
        if self.architecture != "topk":
            raise ValueError(f"only TopK transcoders are implemented, got {self.architecture!r}")

    @property
    def hook_in(self) -> str:
        if self.reads == "mlp_out":
            return self.hook_out
        return f"blocks.{self.layer}.ln2.hook_normalized"

    @property
    def hook_out(self) -> str:
        return f"blocks.{self.layer}.hook_mlp_out"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TranscoderConfig":
        return config_from_dict(cls, data)


class Transcoder(nn.Module):
    """A TopK transcoder for one MLP layer. ``encode``, ``decode``, ``forward -> (y_hat, f)``."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        # Decoder rows start as random unit vectors and the encoder as their transpose (as for a TopK
        # SAE): every feature starts alive and reading roughly what it writes.
        W_dec = torch.randn(cfg.d_trans, cfg.d_out, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc = torch.randn(cfg.d_in, cfg.d_trans, generator=g) / cfg.d_in ** 0.5
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_trans))
        self.W_dec = nn.Parameter(W_dec * 0.1)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.metrics: dict = {}

    @property
    def d_sae(self) -> int:  # the name chapter 06's corpus functions read
        return self.cfg.d_trans

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_trans"]:
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_trans"]:
        return topk_relu(self.pre_activation(x), self.cfg.k)

    def decode(self, f: Float[Tensor, "... d_trans"]) -> Float[Tensor, "... d_out"]:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Tensor]:
        """(y_hat, f): the chapter's reference ``transcoder_forward``, on this module's weights."""
        from utils.attribution.exercises import transcoder_forward

        return transcoder_forward(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.cfg.k)
