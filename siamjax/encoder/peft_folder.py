"""LoRA adapters as a PEFT folder: `adapter_config.json` + `adapter_model.safetensors`, as
`peft.PeftModel.save_pretrained` writes them, so `PeftModel.from_pretrained(base, folder)` and
sentence-transformers' `load_adapter` put siamjax-trained adapters onto the HF base model.

PEFT's names: the tensor `base_model.model.<module>.lora_A.weight` is A^T (`[r, in]`) and
`lora_B.weight` is B^T (`[out, r]`) of the HF module `<module>`, scaled by `lora_alpha / r`. The
module name is read from the family's own HF tensor names (`<module>.weight` maps to the
projection's kernel), so every family with LoRA targets gets its names from one list.
`target_modules` lists the full module names: suffixes would be ambiguous in BERT
(`output.dense` also ends `attention.output.dense`).
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

from siamjax.encoder import lora
from siamjax.encoder.model import EncoderSpec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def module_names(spec: EncoderSpec, params: dict) -> dict[tuple[str, ...], str]:
    """Our path of each wrapped projection -> its HF module name in the base transformer."""
    kernels = {path: hf for hf, path, _ in spec.transformer.tensor_names().names if path[-1] == "kernel"}
    return {path: kernels[path + ("kernel",)].removesuffix(".weight") for path in lora.adapter_paths(params)}


def write_adapter(directory: pathlib.Path, *, spec: EncoderSpec, params: dict,
                  base_model_name_or_path: str = "") -> pathlib.Path:
    """Write `params`' adapters (a LoRA encoder's params) as a PEFT LoRA folder in `directory`.

    Refused when the Dense heads were trained too (`train_heads`): a PEFT adapter holds only the
    transformer's adapters, so the folder would silently drop the trained heads; export the
    merged model instead.
    """
    config = spec.lora
    if config is None:
        raise ValueError("the encoder has no LoRA adapters")
    if config.train_heads and spec.dense:
        raise ValueError("the Dense heads were trained (lora.train_heads) but a PEFT adapter folder holds only the "
                         "transformer's adapters; export the merged model instead")
    names = module_names(spec, params)
    tensors = {}
    for path, module in names.items():
        node = params
        for key in path:
            node = node[key]
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(np.asarray(node["lora_a"]).T)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(np.asarray(node["lora_b"]).T)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": sorted(names.values()), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2))
    return directory
