"""Flax NNX encoders and their Hugging Face / sentence-transformers folder I/O."""
from siamjax.encoder.bert import BertConfig
from siamjax.encoder.model import DenseConfig, EncoderSpec, make_encode_fn
from siamjax.encoder.pooling import PoolingConfig
from siamjax.encoder.sentence_encoder import SentenceEncoder, bucket_length

__all__ = ["BertConfig", "DenseConfig", "EncoderSpec", "PoolingConfig", "SentenceEncoder",
           "bucket_length", "make_encode_fn"]
