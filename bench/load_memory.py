"""Peak memory and time of loading a 300M-parameter Gemma-3-shaped folder (EmbeddingGemma-300m's
config.json, random weights) with `SentenceEncoder.from_pretrained`.

    python bench/load_memory.py [--folder /tmp/egemma-random] [--param-dtype float32|bfloat16]

Writes the folder once (1.2 GB of float32 safetensors, model + 2_Dense + 3_Dense + Normalize),
then loads it in a fresh process and prints its peak RSS (VmHWM) next to the RSS after
`import siamjax` and the checkpoint's size: streaming the tensors one at a time should add about
one copy of the weights (plus the largest tensor, the 262k x 768 embedding, in flight), not two.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def write_folder(folder: pathlib.Path) -> int:
    """EmbeddingGemma-300m's layout with random float32 weights; returns the parameter count."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from decoder_fixtures import EMBEDDINGGEMMA_300M

    cfg = EMBEDDINGGEMMA_300M
    d, f, h = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    n, k = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rng = np.random.default_rng(0)
    rand = lambda *shape: rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    tensors = {"embed_tokens.weight": rand(cfg["vocab_size"], d), "norm.weight": rand(d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        tensors.update({p + "self_attn.q_proj.weight": rand(n * h, d), p + "self_attn.k_proj.weight": rand(k * h, d),
                        p + "self_attn.v_proj.weight": rand(k * h, d), p + "self_attn.o_proj.weight": rand(d, n * h),
                        p + "self_attn.q_norm.weight": rand(h), p + "self_attn.k_norm.weight": rand(h),
                        p + "mlp.gate_proj.weight": rand(f, d), p + "mlp.up_proj.weight": rand(f, d),
                        p + "mlp.down_proj.weight": rand(d, f)})
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            tensors[p + norm + ".weight"] = rand(d)
    folder.mkdir(parents=True, exist_ok=True)
    count = sum(t.size for t in tensors.values())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (folder / "config.json").write_text(json.dumps(cfg))
    # a word-level vocabulary as large as the embedding (siamjax refuses a tokenizer far smaller than it)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "hello", "world"]
    words = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(cfg["vocab_size"] - len(specials))])}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(str(folder))
    modules = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"), ("Dense", "3_Dense"),
               ("Normalize", "4_Normalize")]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 2048, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": d, "pooling_mode_mean_tokens": True}))
    for name, (i, o) in (("2_Dense", (d, 4 * d)), ("3_Dense", (4 * d, d))):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(
            {"in_features": i, "out_features": o, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}))
        save_file({"linear.weight": rand(o, i)}, str(folder / name / "model.safetensors"))
        count += i * o
    (folder / "4_Normalize").mkdir(exist_ok=True)
    return count


def _peak_rss_gib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # not Linux


def measure(folder: pathlib.Path, param_dtype: str) -> dict:
    """Run in a fresh process: RSS after imports, then load and report peak RSS and time."""
    import siamjax

    base = _peak_rss_gib()
    start = time.perf_counter()
    model = siamjax.SentenceEncoder.from_pretrained(folder, param_dtype=param_dtype)
    seconds = time.perf_counter() - start
    peak = _peak_rss_gib()
    emb = model.encode(["hello world"])
    return {"rss_after_import_gib": round(base, 2), "peak_rss_gib": round(peak, 2),
            "load_seconds": round(seconds, 1), "embedding_dim": int(emb.shape[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/siamjax-egemma-random")
    parser.add_argument("--param-dtype", default="float32")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = pathlib.Path(args.folder)
    if args.child:
        print(json.dumps(measure(folder, args.param_dtype)))
        return
    if not (folder / "tokenizer.json").is_file():
        print(f"writing {folder}: {write_folder(folder) / 1e6:.0f}M parameters")
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**30
    out = subprocess.run([sys.executable, __file__, "--child", "--folder", str(folder), "--param-dtype",
                          args.param_dtype], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["checkpoint_gib"] = round(size, 2)
    result["peak_minus_import_gib"] = round(result["peak_rss_gib"] - result["rss_after_import_gib"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
