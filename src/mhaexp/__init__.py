"""mhaexp: config-driven experiments on how attention heads specialize."""

from mhaexp.attention import HookPoint, MultiHeadAttention
from mhaexp.errors import ConfigError
from mhaexp.model import ModelConfig, Transformer

__all__ = ["ConfigError", "HookPoint", "ModelConfig", "MultiHeadAttention", "Transformer"]
__version__ = "0.1.0"
