"""The course's hooked transformer, its bundled weights, and the LM training script."""
from utils.models.config import ModelConfig
from utils.models.loading import BUNDLED, load_model, load_pretrained, save_model
from utils.models.transformer import HookedTinyTransformer, lm_cross_entropy

__all__ = ["ModelConfig", "HookedTinyTransformer", "load_model", "load_pretrained", "save_model",
           "lm_cross_entropy", "BUNDLED"]
