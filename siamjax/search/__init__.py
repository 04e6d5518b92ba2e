"""Search over embeddings: exact top-k sharded over devices, duplicate finding (paraphrase
mining, communities), hard-negative mining and search over quantised codes."""
from siamjax.search.duplicates import community_detection, paraphrase_mining, paraphrase_mining_embeddings
from siamjax.search import mining
from siamjax.search.exact import SCORES, search_mesh, semantic_search
from siamjax.search.mining import encode_sharded, mine_hard_negatives
from siamjax.search.quantized import quantized_search

__all__ = ["SCORES", "community_detection", "encode_sharded", "mine_hard_negatives", "mining",
           "paraphrase_mining", "paraphrase_mining_embeddings", "quantized_search", "search_mesh",
           "semantic_search"]
