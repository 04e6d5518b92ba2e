"""siamjax: siamese sentence-embedding training in JAX/Flax NNX.

sentence-transformers' models, losses and evaluators, rebuilt around one pure
`encode(params, tokens)` function that `jax.jit` shards over device meshes.
"""
from siamjax import evaluation, losses, quantization, search
from siamjax.encoder import BertConfig, SentenceEncoder
from siamjax.search import mining  # siamjax.mining.mine_hard_negatives, as sentence-transformers' util

__version__ = "0.1.0"
__all__ = ["BertConfig", "SentenceEncoder", "evaluation", "losses", "mining", "quantization", "search",
           "__version__"]
