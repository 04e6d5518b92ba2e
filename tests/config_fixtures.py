"""The tiny training config the end-to-end tests share (one template, per-test fields on top),
and reading what a run wrote."""
import json
import pathlib

# Random-word vocabulary of the tests' synthetic pair files.
WORDS = ("cat dog fish bird tree car road house blue red green small big fast slow happy sad old new "
         "river hill lamp book door").split()

# A 2-layer, 32-wide random BERT trained at batch 16, logging every step, no progress bar.
TINY_FIELDS = {
    "model.init.hidden_size": 32,
    "model.init.num_hidden_layers": 2,
    "model.init.num_attention_heads": 2,
    "model.init.intermediate_size": 64,
    "model.init.max_position_embeddings": 64,
    "train.batch_size": 16,
    "train.log_every_steps": 1,
    "train.progress_bar": False,
    "mesh.fsdp_min_size": 256,
}


def write_tiny_config(path: pathlib.Path, *, tokenizer, fields: dict) -> pathlib.Path:
    """A config file: configs/default.py, the tiny model with `tokenizer`, then `fields`
    (dotted config name -> value, written as Python literals)."""
    settings = {"model.init.tokenizer": str(tokenizer), **TINY_FIELDS, **fields}
    body = "".join(f"    c.{name} = {value!r}\n" for name, value in settings.items())
    path.write_text("from siamjax.train.config import default_config\n\n\ndef get_config(arg=None):\n"
                    f"    c = default_config()\n{body}    return c\n")
    return path


def read_jsonl(path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
