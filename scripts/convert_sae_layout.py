"""One-off: rewrite saved SAEs from the course's old layout to SAELens's (the layout it uses now).

    python scripts/convert_sae_layout.py                    # every bundled SAE, utils/assets/saes/*
    python scripts/convert_sae_layout.py path/to/STEM ...   # others (STEM.safetensors + STEM.json)

Old files hold ``W_enc [d_sae, d_in]`` and ``W_dec [d_in, d_sae]`` (columns of W_dec = features) and
have no ``layout`` metadata; converted ones hold ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``
(rows of W_dec = features), in the same dtype, with ``layout = "saelens"`` in the safetensors
metadata and a ``"layout"`` line in the JSON card. Every other tensor and every JSON field is kept.

Idempotent: a file already in the new layout is refused (left untouched, reported), so running the
script twice changes nothing. ``load_sae`` reads both layouts, so converting is never required;
it makes the files read the way the course's code does.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from utils.sae.config import SAEConfig  # noqa: E402
from utils.sae.saving import LAYOUT, LAYOUT_NOTE, SAE_DIR, state_dict_layout, to_current_layout  # noqa: E402


def convert(stem: Path) -> bool:
    """Convert one STEM.safetensors + STEM.json in place; False (untouched) if already converted."""
    weights, card = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    record = json.loads(card.read_text())
    cfg = SAEConfig.from_dict(record["config"])
    with safe_open(str(weights), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    state = load_file(str(weights))
    if metadata.get("layout") == LAYOUT or state_dict_layout(state, cfg, metadata) == LAYOUT:
        return False
    state = {k: v.contiguous() for k, v in to_current_layout(state, cfg, metadata).items()}
    mode = weights.stat().st_mode & 0o777
    save_file(state, str(weights), metadata={**metadata, "format": metadata.get("format", "pt"), "layout": LAYOUT})
    weights.chmod(mode)  # save_file writes a fresh file, 0600
    card.write_text(json.dumps({"layout": LAYOUT_NOTE, **{k: v for k, v in record.items() if k != "layout"}},
                               indent=1) + "\n")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stems", nargs="*", type=Path, help="path stems (default: every bundled SAE)")
    args = parser.parse_args(argv)
    stems = [s.with_suffix("") if s.suffix in (".safetensors", ".json") else s for s in args.stems]
    stems = stems or sorted(p.with_suffix("") for p in SAE_DIR.glob("*.safetensors"))
    for stem in stems:
        print(f"{stem}: {'converted' if convert(stem) else 'already in the saelens layout: refused, left as it is'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
