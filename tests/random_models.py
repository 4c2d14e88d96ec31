"""Models and SAEs with every parameter random (biases included, so no term can hide behind a
zero): the inputs the oracle tests compare references on."""
import torch

from utils.models import HookedTinyTransformer, ModelConfig


def randomized(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> HookedTinyTransformer:
    """A model of ``cfg`` whose parameters are all N(0, 0.5^2), seeded through torch's global RNG, drawn in
    float32 and then cast to ``dtype``."""
    torch.manual_seed(seed)
    model = HookedTinyTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.to(dtype).eval()


def randomize_sae_(sae, seed: int = 0):
    """Every parameter N(0, 0.7^2) from a private generator, then unit-norm decoder rows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        sae.normalize_decoder_()
    return sae
