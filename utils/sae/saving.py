"""Saving and loading SAEs: ``STEM.safetensors`` (weights) + ``STEM.json`` (config, metrics, layout).

Files hold the logical tensors of ``utils.sae.model`` in SAELens's layout, ``W_enc [d_in, d_sae]``
and ``W_dec [d_sae, d_in]``, and say so: ``layout = "saelens"`` in the safetensors metadata and a
``"layout"`` line in the JSON card. ``load_sae`` reads only such files. (Files from before the course
adopted that layout held the transposes and no key; none is bundled any more. The one-off converter
that rewrote them is ``scripts/convert_sae_layout.py`` in the history, commit ab15a71.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from utils.paths import ASSETS
from utils.sae.config import SAEConfig
from utils.sae.model import SparseAutoencoder

SAE_DIR = ASSETS / "saes"

LAYOUT = "saelens"  # W_enc [d_in, d_sae], W_dec [d_sae, d_in]
LAYOUT_NOTE = "W_enc [d_in, d_sae], W_dec [d_sae, d_in] (row i = feature i's direction), as SAELens"


def check_layout(state: dict, cfg: SAEConfig, metadata: Optional[dict] = None) -> None:
    """ValueError unless the file's metadata says ``layout = LAYOUT`` and W_enc, W_dec have its shapes.

    The metadata decides (when d_in == d_sae the shapes cannot tell a transposed file apart).
    """
    layout = (metadata or {}).get("layout")
    if layout != LAYOUT:
        raise ValueError(f"SAE file layout {layout!r}: load_sae reads files save_sae writes, layout {LAYOUT!r} "
                         "(W_enc [d_in, d_sae], W_dec [d_sae, d_in]); a file with no layout key is from before "
                         "the course adopted it (convert it with scripts/convert_sae_layout.py of commit ab15a71)")
    expected = ((cfg.d_in, cfg.d_sae), (cfg.d_sae, cfg.d_in))
    shapes = (tuple(state["W_enc"].shape), tuple(state["W_dec"].shape))
    if shapes != expected:
        raise ValueError(f"W_enc {shapes[0]} and W_dec {shapes[1]} do not fit d_in={cfg.d_in}, d_sae={cfg.d_sae} "
                         f"in the {LAYOUT!r} layout (expected {expected[0]} and {expected[1]})")


def save_sae(sae: SparseAutoencoder, path_stem: Union[str, Path], metrics: Optional[dict] = None,
             dtype: torch.dtype = torch.float32) -> Path:
    """Write ``STEM.safetensors`` (weights) and ``STEM.json`` (config, and metrics if given).

    ``dtype=torch.float16`` halves the file (for bundling); ``load_sae`` always returns fp32.
    Returns the safetensors path. ``load_sae(STEM)`` reads both back.
    """
    from safetensors.torch import save_file

    stem = Path(path_stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sae.state_dict().items()}
    weights = stem.with_name(stem.name + ".safetensors")
    save_file(state, str(weights), metadata={"format": "pt", "layout": LAYOUT})
    record = {"layout": LAYOUT_NOTE, "config": sae.cfg.to_dict()}
    if metrics is not None:
        record["metrics"] = metrics
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    return weights


def load_sae(path_or_name: Union[str, Path], device: Union[str, torch.device] = "cpu") -> SparseAutoencoder:
    """An SAE from ``save_sae`` output: a bundled name (``utils/assets/saes/NAME``) or a path stem.

    The path may also end in ``.safetensors`` or ``.json``. ``sae.metrics`` holds the saved
    metrics (an empty dict if none were saved). Only ``LAYOUT`` files load (``check_layout``).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    stem = Path(path_or_name)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    candidates = [stem]
    if len(stem.parts) == 1:
        candidates.insert(0, SAE_DIR / stem)
    for candidate in candidates:
        weights = candidate.with_name(candidate.name + ".safetensors")
        config = candidate.with_name(candidate.name + ".json")
        if weights.exists() and config.exists():
            break
    else:
        bundled = sorted(p.stem for p in SAE_DIR.glob("*.safetensors")) if SAE_DIR.exists() else []
        raise ValueError(f"no saved SAE at {str(path_or_name)!r} (looked for STEM.safetensors + STEM.json); "
                         f"bundled SAEs: {bundled}")
    record = json.loads(config.read_text())
    sae = SparseAutoencoder(SAEConfig.from_dict(record["config"]))
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    check_layout(state, sae.cfg, metadata)
    sae.load_state_dict(state, strict=True)  # copied into the parameters' own memory order
    sae.metrics = record.get("metrics", {})
    return sae.to(device)
