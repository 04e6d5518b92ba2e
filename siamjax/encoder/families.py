"""The registry of encoder families: `config.json`'s `model_type` -> the config class that owns
the family (its `config.json` fields, NNX module, HF tensor names and position rule).

Adding a family is one module with a config class implementing `TransformerConfig`, plus one
line in `_FAMILIES`; folder I/O, `SentenceEncoder`, training and FSDP need no change.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

from siamjax.encoder import hf_names
from siamjax.encoder.bert import BertConfig
from siamjax.encoder.distilbert import DistilBertConfig
from siamjax.encoder.gemma3 import Gemma3Config
from siamjax.encoder.llama import LlamaConfig
from siamjax.encoder.modernbert import ModernBertConfig
from siamjax.encoder.mpnet import MPNetConfig


class TransformerConfig(Protocol):
    """What every family's (frozen, hashable) config class provides."""

    ARCHITECTURES: ClassVar[dict[str, str]]  # model_type it reads -> `transformers` class it saves as
    SCORE_BIAS: ClassVar[bool]  # adds a bias to the attention scores (MPNet): no splash attention
    model_type: str

    @property
    def hidden_size(self) -> int: ...           # width of the token states the encoder returns

    @property
    def num_hidden_layers(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...            # longest input the model supports

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "TransformerConfig": ...

    def to_hf(self, base: dict) -> dict: ...    # `base` (a loaded config.json) updated with our fields

    def tensor_names(self) -> hf_names.TensorNames: ...

    def build(self, *, dtype: Any, param_dtype: Any, remat: bool, attention: str, rngs: Any) -> Any: ...


_FAMILIES: tuple[type, ...] = (BertConfig, MPNetConfig, DistilBertConfig, ModernBertConfig, Gemma3Config, LlamaConfig)
FAMILIES: dict[str, type] = {model_type: cls for cls in _FAMILIES for model_type in cls.ARCHITECTURES}


def _model_type(config: dict, source: str) -> str:
    """`model_type`, or (old folders that lack it) the family whose architecture name starts
    `architectures[0]`, e.g. DistilBertModel -> distilbert."""
    if "model_type" in config:
        return config["model_type"]
    arch = (config.get("architectures") or [""])[0]
    stems = {name.removesuffix("Model"): t for cls in _FAMILIES for t, name in cls.ARCHITECTURES.items()}
    matches = [stem for stem in stems if arch.startswith(stem)]
    if not matches:
        raise ValueError(f"{source}: no model_type (and architectures={config.get('architectures')!r} names "
                         f"no supported family); siamjax supports {', '.join(sorted(FAMILIES))}")
    return stems[max(matches, key=len)]


def config_from_hf(config: dict, source: str) -> TransformerConfig:
    """The family config of a Hugging Face `config.json` dict; unknown families are errors."""
    model_type = _model_type(config, source)
    if model_type not in FAMILIES:
        raise ValueError(f"{source}: unknown architecture model_type={model_type!r}; siamjax supports "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type].from_hf({**config, "model_type": model_type}, source)
