"""Search over embeddings: exact top-k sharded over devices, duplicate finding (paraphrase
mining, communities) and search over quantised codes."""
from siamjax.search.duplicates import community_detection, paraphrase_mining, paraphrase_mining_embeddings
from siamjax.search.exact import SCORES, search_mesh, semantic_search
from siamjax.search.quantized import quantized_search

__all__ = ["SCORES", "community_detection", "paraphrase_mining", "paraphrase_mining_embeddings",
           "quantized_search", "search_mesh", "semantic_search"]
