"""Flax NNX encoders (BERT/RoBERTa, MPNet, DistilBERT, ModernBERT) and their Hugging Face /
sentence-transformers folder I/O."""
from siamjax.encoder.bert import BertConfig
from siamjax.encoder.distilbert import DistilBertConfig
from siamjax.encoder.families import FAMILIES
from siamjax.encoder.model import DenseConfig, EncoderSpec, make_encode_fn
from siamjax.encoder.modernbert import ModernBertConfig
from siamjax.encoder.mpnet import MPNetConfig
from siamjax.encoder.pooling import PoolingConfig
from siamjax.encoder.sentence_encoder import SentenceEncoder, bucket_length

__all__ = ["FAMILIES", "BertConfig", "DenseConfig", "DistilBertConfig", "EncoderSpec", "MPNetConfig",
           "ModernBertConfig", "PoolingConfig", "SentenceEncoder", "bucket_length", "make_encode_fn"]
