"""Config files, `--config.x=y` overrides and the checks that run before anything compiles."""
import pathlib
import re

import pytest

from siamjax.cli import main as cli_main, train_cmd
from siamjax.train.config import ConfigError
from siamjax.train.config_checks import validate as validate_config
from siamjax.train.config_file import apply_overrides, flat_fields, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
PRESETS = ["stsb_minilm.py", "nli_mnrl.py", "tpu_pod.py", "tpu_pod.py:v4-8", "tpu_pod.py:v5e-256",
           "gpu_cluster.py", "gpu_cluster.py:4", "llm_embedder.py:gemma3,tpu_pod", "llm_embedder.py:qwen3,gpu_cluster"]


def cfg(spec="stsb_minilm.py", *overrides):
    return load_config(str(CONFIGS / spec), list(overrides))


def test_default_documents_every_field():
    """Each field assignment in default.py carries a comment (same line or the line above)."""
    lines = (CONFIGS / "default.py").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"\s+[cd](\.\w+)+ = ", line) and "#" not in line:
            above = lines[i - 1].strip()
            if not above.startswith("#") and not line.strip().startswith(("c.model.init.", "c.optim.b", "c.optim.eps")):
                undocumented.append(line.strip())
    assert not undocumented, f"fields without a comment: {undocumented}"


@pytest.mark.parametrize("spec", PRESETS)
def test_presets_only_set_known_fields(spec):
    base = set(flat_fields(cfg("default.py")))
    extra = set(flat_fields(cfg(spec))) - base
    assert all(name.startswith("loss.kwargs.") for name in extra), extra


@pytest.mark.parametrize("spec", PRESETS)
def test_presets_validate_on_eight_devices(spec):
    """Every preset passes the pre-compile checks (its data is a tfds builder or the shared STS-b)."""
    config = cfg(spec)
    if config.mesh.fsdp > 8:  # a pod slice's fsdp axis is wider than this 8-device host
        config = cfg(spec, "--config.mesh.fsdp=8")
    validate_config(config)


def test_stsb_quickstart_config():
    c = cfg()
    assert c.loss.name == "cosent" and c.loss.kwargs.scale == 20.0
    assert pathlib.Path(c.model.name_or_path).is_dir() or c.model.name_or_path.endswith("all-MiniLM-L6-v2")
    assert pathlib.Path(c.data.train.path).name == "sts-train.csv"
    assert dict(c.data.train.columns) == {"sentence1": 5, "sentence2": 6, "score": 4}
    assert c.data.pack_length == c.model.max_seq_length == 128  # packed batches: the fast CPU path


def test_overrides_are_typed():
    c = cfg("stsb_minilm.py", "--config.optim.lr=3e-5", "--config.train.batch_size", "32",
            "--config.data.shuffle=false", "--config.data.buckets=(16, 64)", "--config.optim.warmup_ratio=0",
            "--config.loss.kwargs.scale=30", "--config.loss.kwargs.new_option=abc", "--config.model.name_or_path=x/y")
    assert c.optim.lr == 3e-5 and c.train.batch_size == 32 and c.data.shuffle is False
    assert c.data.buckets == (16, 64) and c.optim.warmup_ratio == 0.0 and isinstance(c.optim.warmup_ratio, float)
    assert c.loss.kwargs.scale == 30 and c.loss.kwargs.new_option == "abc"
    assert c.model.name_or_path == "x/y"


@pytest.mark.parametrize("override, match", [
    ("--config.optim.lrr=1e-5", r"unknown config field 'optim.lrr'; did you mean optim.lr"),
    ("--config.optimizer.lr=1e-5", r"unknown config field 'optimizer.lr'"),
    ("--config.train.batch_size=abc", r"train.batch_size=abc: expected int"),
    ("--config.train.batch_size=1.5", r"expected int, got float"),
    ("--config.data.shuffle=maybe", r"expected a bool"),
    ("--config.optim=3", r"optim is a group of fields"),
    ("--config.optim.lr", r"missing a value"),
    ("--lr=3", r"unrecognised argument '--lr=3'"),
])
def test_override_errors_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(cfg("default.py"), [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"), [])
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config(str(bad), [])
    with pytest.raises(ConfigError, match="unknown slice 'v9'"):
        load_config(str(CONFIGS / "tpu_pod.py:v9"), [])


@pytest.mark.parametrize("overrides, match", [
    (["--config.mesh.data=-1", "--config.train.batch_size=12"],
     r"train.batch_size=12 is not divisible by the 8 devices .*multiple of 8"),
    (["--config.mesh.data=3"], r"mesh.data=3 x mesh.fsdp=1 = 3 devices, but 8"),
    (["--config.mesh.num_devices=16"], r"mesh.num_devices=16: only 8 devices"),
    (["--config.data.train.path=/no/such/file.tsv"], r"data.train.path='/no/such/file.tsv': file not found"),
    (["--config.data.train.path="], r"data.train.path is empty"),
    (["--config.eval.sts.path=/missing.csv"], r"eval.sts.path='/missing.csv': file not found"),
    (["--config.data.train.on_bad_row=ignore"], r"data.train.on_bad_row='ignore'"),
    (["--config.loss.name=cosine_sim"], r"loss.name='cosine_sim': unknown; valid: .*cosent"),
    (["--config.optim.schedule=step"], r"optim.schedule='step'"),
    (["--config.model.name_or_path=/no/model"], r"model.name_or_path='/no/model': no such folder"),
    (["--config.model.dtype=float16"], r"model.dtype='float16'"),
    (["--config.train.grad_cache_chunk=5", "--config.data.pack_length=0"],
     r"grad_cache_chunk=5 must divide train.batch_size=32"),
    (["--config.mesh.data=-1", "--config.train.grad_cache_chunk=4", "--config.data.pack_length=0"],
     r"train.grad_cache_chunk=4 must be a multiple of the mesh's data axis size 8"),
    (["--config.data.pack_length=64"], r"data.pack_length=64: must be 0 \(off\) or >= model.max_seq_length=128"),
    (["--config.data.pack_length=128", "--config.train.grad_cache_chunk=8"],
     r"train.grad_cache_chunk=8 with data.pack_length=128: packed batches are chunked by tokens"),
    (["--config.data.pack_length=128", "--config.train.grad_cache_tokens=1000"],
     r"train.grad_cache_tokens=1000 must be a multiple of data.pack_length=128"),
    (["--config.data.pack_length=0", "--config.train.grad_cache_tokens=1024"],
     r"train.grad_cache_tokens=1024 chunks packed rows"),
    (["--config.loss.name=gist"], r"loss.name='gist' needs a guide model: set loss.guide"),
    (["--config.loss.guide=/some/model"], r"loss.guide='/some/model' is only used by \('gist',\)"),
    (["--config.loss.name=mnrl", "--config.loss.kwargs.ring=true"], r"ring=True .* needs loss.sharded=True"),
    (["--config.loss.name=margin_mse"], r"loss.name='margin_mse' distils teacher data: map a column to the "
     r"'teacher' role"),
    (["--config.train.num_steps=0"], r"train.num_steps=0: must be >= 1, or -1 to train for train.num_epochs"),
    (["--config.train.num_steps=-5"], r"train.num_steps=-5: must be >= 1, or -1"),
    (["--config.train.num_epochs=0"], r"train.num_epochs=0.0: must be > 0 \(or set train.num_steps\)"),
    (["--config.data.train.score_range=(5.0, 0.0)"], r"data.train.score_range=\(5.0, 0.0\): must be \(low, high\)"),
    (["--config.eval.sts.score_range=(1.0, 1.0)"], r"eval.sts.score_range=\(1.0, 1.0\)"),
])
def test_validation_errors(overrides, match):
    config = cfg("stsb_minilm.py", "--config.mesh.num_devices=1", *overrides) \
        if not any("mesh" in o for o in overrides) else cfg("stsb_minilm.py", *overrides)
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_cli_reports_config_errors_before_compiling(tmp_path, capsys, monkeypatch):
    """A config error stops `siamjax train` before any model, data or compile work starts."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("train_and_evaluate ran on an invalid config")

    monkeypatch.setattr(train_cmd, "train_and_evaluate", must_not_run)
    code = cli_main(["train", "--config", str(CONFIGS / "stsb_minilm.py"), "--workdir", str(tmp_path / "run"),
                     "--config.optim.lrr=3e-5"])
    assert code == 2
    assert "config error: unknown config field 'optim.lrr'; did you mean optim.lr" in capsys.readouterr().err
    code = cli_main(["train", "--config", str(CONFIGS / "stsb_minilm.py"), "--workdir", str(tmp_path / "run"),
                     "--config.train.batch_size=12"])
    assert code == 2 and "train.batch_size=12 is not divisible" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing is written before the config is valid"
