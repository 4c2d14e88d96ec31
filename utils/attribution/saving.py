"""Saving and loading transcoders: ``STEM.safetensors`` (weights) + ``STEM.json`` (config, metrics).

Bundled ones live in utils/assets/transcoders/ as fp16 (``gelu-2l-tc-l0``, ``gelu-2l-tc-l1``), in
SAELens's layout: ``W_enc [d_in, d_trans]``, ``W_dec [d_trans, d_out]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from utils.attribution.transcoder import Transcoder, TranscoderConfig
from utils.paths import ASSETS

TRANSCODER_DIR = ASSETS / "transcoders"
LAYOUT_NOTE = "W_enc [d_in, d_trans], W_dec [d_trans, d_out] (row i = what feature i writes), as SAELens"


def bundled_name(model_name: str, layer: int) -> str:
    return f"{model_name}-tc-l{layer}"


def save_transcoder(tc: Transcoder, path_stem: Union[str, Path], metrics: Optional[dict] = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    from safetensors.torch import save_file

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tc.state_dict().items()}
    weights = stem.with_name(stem.name + ".safetensors")
    save_file(state, str(weights), metadata={"format": "pt", "layout": "saelens"})
    record = {"layout": LAYOUT_NOTE, "config": tc.cfg.to_dict(), "metrics": metrics or {}}
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    return weights


def load_transcoder(path_or_name: Union[str, Path], dtype: torch.dtype = torch.float32) -> Transcoder:
    """A bundled transcoder by name (``gelu-2l-tc-l0``) or a saved one by path stem."""
    from safetensors.torch import load_file

    stem = Path(path_or_name)
    if len(stem.parts) == 1:
        stem = TRANSCODER_DIR / stem
    weights, card = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    if not (weights.exists() and card.exists()):
        bundled = sorted(p.stem for p in TRANSCODER_DIR.glob("*.safetensors")) if TRANSCODER_DIR.exists() else []
        raise ValueError(f"no saved transcoder at {str(path_or_name)!r}; bundled: {bundled}")
    record = json.loads(card.read_text())
    tc = Transcoder(TranscoderConfig.from_dict(record["config"]))
    tc.load_state_dict({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, strict=True)
    tc.metrics = record.get("metrics", {})
    return tc.to(dtype).eval()


def load_transcoders(model_name: str = "gelu-2l", n_layers: int = 2, dtype: torch.dtype = torch.float32
                     ) -> list[Transcoder]:
    """The bundled transcoders of every MLP layer of ``model_name``, in layer order."""
    return [load_transcoder(bundled_name(model_name, layer), dtype) for layer in range(n_layers)]
