"""siamjax training configs: each file's `get_config(arg)` returns an ml_collections ConfigDict.

This folder is a package so that presets compose by importing each other as modules
(`from configs import nli_mnrl`); `siamjax train --config configs/x.py[:arg]` imports the file
as `configs.x`. Every field and its meaning: `siamjax.train.config.default_config`.
"""
