"""siamjax: siamese sentence-embedding training in JAX/Flax NNX.

sentence-transformers' models, losses and evaluators, rebuilt around one pure
`encode(params, tokens)` function that `jax.jit` shards over device meshes.
"""
import os

# siamjax uses transformers only for tokenizers and configs, never PyTorch: its import-time advice
# "PyTorch was not found" would be noise on every command of the torch-free install.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from siamjax import evaluation, losses, quantization, search
from siamjax.encoder import BertConfig, DistilBertConfig, ModernBertConfig, MPNetConfig, SentenceEncoder

__version__ = "0.1.0"
__all__ = ["BertConfig", "DistilBertConfig", "MPNetConfig", "ModernBertConfig", "SentenceEncoder", "evaluation", "losses", "quantization", "search", "__version__"]
