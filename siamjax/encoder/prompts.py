"""Prompts and the other inference settings a sentence-transformers folder carries in
`config_sentence_transformers.json`: `prompts`, `default_prompt_name`, `similarity_fn_name`,
`truncate_dim` and `model_type`.

Why here and exact: prompted embedders (e5's "query: ", bge's instructions, EmbeddingGemma's
"task: search result | query: ") are trained with their prompts, so a model used without them
(or with the wrong one) still returns vectors, only worse ones: silently. The rules below are
sentence-transformers 6's (`SentenceTransformer.encode`, `encode_query`, `encode_document`,
`Transformer._get_prompt_length`), so a folder encodes the same here as in PyTorch.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from siamjax.encoder import rows
from siamjax.similarity import SIMILARITIES

CONFIG_FILE = "config_sentence_transformers.json"
# sentence-transformers 6 gives every model these prompt names (empty unless the folder sets them),
# so `encode_query` / `encode_document` never fall back to `default_prompt_name`.
DEFAULT_PROMPTS = {"query": "", "document": ""}
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
_KNOWN_KEYS = ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim", "model_type", "__version__")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The inference settings of a model; `extra` holds the file's other keys, written back as read."""

    prompts: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    truncate_dim: int | None = None
    model_type: str = "SentenceTransformer"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "prompts", {**DEFAULT_PROMPTS, **dict(self.prompts)})
        self.check(CONFIG_FILE)

    def check(self, source: str) -> None:
        """One clear error naming `source` and the field for a setting sentence-transformers refuses."""
        bad = [k for k, v in self.prompts.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"{source}: prompts must map names to strings; {bad[0]!r} maps to "
                             f"{self.prompts[bad[0]]!r}")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"{source}: default_prompt_name {self.default_prompt_name!r} is not one of the "
                             f"prompts {sorted(self.prompts)}")
        if self.similarity_fn_name not in SIMILARITIES:
            raise ValueError(f"{source}: similarity_fn_name {self.similarity_fn_name!r} is not one of {SIMILARITIES}")
        if self.truncate_dim is not None and (isinstance(self.truncate_dim, bool) or not isinstance(
                self.truncate_dim, int) or self.truncate_dim < 1):
            raise ValueError(f"{source}: truncate_dim must be a positive integer or null, got {self.truncate_dim!r}")

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        """The text to prepend (sentence-transformers' `_resolve_prompt`): `prompt` if given (it
        wins over `prompt_name`), else the prompt named `prompt_name` (an unknown name is an
        error), else the default prompt; "" for none."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt name {prompt_name!r} is not one of the model's prompts {sorted(self.prompts)}")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def task_prompt_name(self, names: Sequence[str], prompt: str | None, prompt_name: str | None) -> str | None:
        """`encode_query` / `encode_document`'s choice: without `prompt` or `prompt_name`, the
        first of `names` the model has (`QUERY_PROMPT_NAMES` / `DOCUMENT_PROMPT_NAMES`)."""
        if prompt is not None or prompt_name is not None:
            return prompt_name
        return next((name for name in names if name in self.prompts), None)


def read_settings(path: pathlib.Path) -> ModelSettings:
    """Parse `config_sentence_transformers.json` (a missing file: sentence-transformers' defaults)."""
    if not path.is_file():
        return ModelSettings()
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    prompts = raw.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ValueError(f"{path}: prompts must be an object of name -> prompt text, got {prompts!r}")
    # sentence-transformers turns null prompts into "" and a missing similarity into cosine
    settings = dict(prompts={k: "" if v is None else v for k, v in prompts.items()},
                    default_prompt_name=raw.get("default_prompt_name"),
                    similarity_fn_name=raw.get("similarity_fn_name") or "cosine",
                    truncate_dim=raw.get("truncate_dim"), model_type=raw.get("model_type") or "SentenceTransformer",
                    extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS})
    try:
        return ModelSettings(**settings)
    except ValueError as err:
        raise ValueError(str(err).replace(CONFIG_FILE, str(path), 1)) from err


def settings_json(settings: ModelSettings, versions: Mapping[str, str]) -> dict:
    """The `config_sentence_transformers.json` object to write (unknown keys kept)."""
    out = {"model_type": settings.model_type, "__version__": dict(versions), "prompts": dict(settings.prompts),
           "default_prompt_name": settings.default_prompt_name, "similarity_fn_name": settings.similarity_fn_name}
    if settings.truncate_dim is not None:
        out["truncate_dim"] = settings.truncate_dim
    return {**settings.extra, **out}


def prompt_length(tokenizer, prompt: str, max_length: int) -> int:
    """Tokens of `prompt` at the start of a prompted text (sentence-transformers'
    `_get_prompt_length`): the prompt tokenised alone, less a trailing special token ([SEP],
    EOS) the tokenizer appends; the leading [CLS]/BOS counts as prompt."""
    if not prompt:
        return 0
    ids = rows.token_ids(tokenizer, [prompt], max_length)[0]
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    return len(ids) - 1 if ids and ids[-1] in special else len(ids)


__all__ = ["CONFIG_FILE", "DEFAULT_PROMPTS", "DOCUMENT_PROMPT_NAMES", "ModelSettings", "QUERY_PROMPT_NAMES",
           "prompt_length", "read_settings", "settings_json"]
