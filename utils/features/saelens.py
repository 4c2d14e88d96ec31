"""Optional, online only: the same questions asked of a public SAE, loaded through SAELens.

Nothing in the course depends on this module. ``public_sae`` returns ``(None, reason)`` at once
when it cannot work: ``HF_HUB_OFFLINE`` set, ``sae_lens`` not installed, or the Hugging Face hub
unreachable (one TCP connection attempt, 2 s at most). It never installs anything.
"""
from __future__ import annotations

import os
import socket

RELEASE, SAE_ID = "gpt2-small-res-jb", "blocks.8.hook_resid_pre"  # a residual-stream SAE of GPT-2 small


def why_not_online(host: str = "huggingface.co", timeout: float = 2.0) -> str | None:
    """None when SAELens can download from the hub; otherwise one line saying why not."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return "HF_HUB_OFFLINE is set"
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        return "sae_lens is not installed (pip install sae-lens, then restart the kernel)"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"{host} is not reachable ({type(exc).__name__})"
    return None


def public_sae(release: str = RELEASE, sae_id: str = SAE_ID, device: str = "cpu"):
    """``(sae, "")`` for a SAELens pretrained SAE, or ``(None, reason)`` without touching the network
    beyond the probe. Older SAELens versions return (sae, cfg_dict, sparsity); both are handled."""
    reason = why_not_online()
    if reason is not None:
        return None, reason
    from sae_lens import SAE

    loaded = SAE.from_pretrained(release=release, sae_id=sae_id, device=device)
    return (loaded[0] if isinstance(loaded, tuple) else loaded), ""
