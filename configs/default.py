"""The default config: every siamjax training field at its default value.

    siamjax train --config configs/default.py --workdir runs/x \
        --config.model.name_or_path=sentence-transformers/all-MiniLM-L6-v2 \
        --config.data.train.path=pairs.jsonl

Each field is listed and commented in `siamjax/train/config.py` (`default_config`), which every
config file starts from. Override any field on the command line with
--config.<group>.<field>=value; the value is parsed to the field's type and unknown fields are
rejected with the closest known names.
"""
from siamjax.train.config import default_config


def get_config(arg=None):
    """The default config; `arg` is unused here (presets use `configs/file.py:arg`)."""
    del arg
    return default_config()
