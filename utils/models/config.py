"""Model configuration: a small dataclass, saved next to the weights as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Optional


def config_from_dict(cls, data: dict):
    """``cls(**data)`` for a config dataclass (the course's model, SAE and transcoder configs), with
    ValueError naming any key that is not one of its fields: a file from another version or a typo
    is refused, never half-read."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    return cls(**data)


@dataclass
class ModelConfig:
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: Optional[int] = None  # None: attention-only
    d_vocab: int = 4096
    n_ctx: int = 128
    positional_embedding_type: Literal["standard", "shortformer"] = "shortformer"
    normalization_type: Optional[Literal["LN"]] = None
    act_fn: Literal["gelu", "gelu_new"] = "gelu"  # TransformerLens names: erf / tanh form
    init_range: float = 0.02
    layer_norm_eps: float = 1e-5
    seed: int = 0

    def __post_init__(self):
        if self.positional_embedding_type not in ("standard", "shortformer"):
            raise ValueError(f"positional_embedding_type must be 'standard' or 'shortformer', "
                             f"got {self.positional_embedding_type!r}")
        if self.normalization_type not in (None, "LN"):
            raise ValueError(f"normalization_type must be None or 'LN', got {self.normalization_type!r}")
        if self.act_fn not in ("gelu", "gelu_new"):
            raise ValueError(f"act_fn must be 'gelu' or 'gelu_new', got {self.act_fn!r}")
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_mlp is not None and self.d_mlp < 1:
            raise ValueError(f"d_mlp must be positive or None, got {self.d_mlp}")

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return config_from_dict(cls, data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
