"""Launchers: each `--dry-run` prints the commands it would run; multi-process argument wiring."""
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from siamjax.parallel.distributed import DistributedArgs, detected_cluster, initialize

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def _run(args, env=None, ok=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SIAMJAX_"))}
    full_env.update(env or {})
    proc = subprocess.run(["bash", *args], capture_output=True, text=True, env=full_env, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_local_multiprocess_dry_run_wires_each_process():
    out = _run([str(LAUNCH / "local_multiprocess.sh"), "--dry-run", "3", "configs/x.py", "--workdir", "w"],
               env={"DEVICES_PER_PROCESS": "2", "PORT": "2222", "XLA_FLAGS": "--xla_dump_to=/tmp/d"}).stdout.splitlines()
    assert len(out) == 3
    for i, line in enumerate(out):
        assert r"XLA_FLAGS=--xla_dump_to=/tmp/d\ --xla_force_host_platform_device_count=2 " in line  # kept, then the count
        assert "SIAMJAX_COORDINATOR=localhost:2222" in line and "SIAMJAX_NUM_PROCESSES=3" in line
        assert f"SIAMJAX_PROCESS_ID={i}" in line
        assert line.rstrip().endswith("-m siamjax.cli train --config configs/x.py --workdir w")


def test_local_multiprocess_rejects_bad_count():
    proc = _run([str(LAUNCH / "local_multiprocess.sh"), "--dry-run", "zero", "c.py"], ok=False)
    assert proc.returncode == 2 and "positive integer" in proc.stderr


def test_slurm_dry_run():
    env = {"CONFIG": "configs/gpu_cluster.py", "WORKDIR": "/shared/runs/a", "PORT": "3333",
           "SLURM_JOB_NODELIST": "gpu-node-7"}
    out = _run([str(LAUNCH / "slurm_gpu.sbatch"), "--dry-run", "--config.optim.lr=3e-5"], env=env).stdout
    assert out.startswith("srun --kill-on-bad-exit=1 --gpus-per-task=1 bash -c")
    for piece in ("SIAMJAX_COORDINATOR=gpu-node-7:3333", "SIAMJAX_NUM_PROCESSES=\\$SLURM_NTASKS",
                  "SIAMJAX_PROCESS_ID=\\$SLURM_PROCID", "--config\\ configs/gpu_cluster.py",
                  "--workdir\\ /shared/runs/a", "--config.optim.lr=3e-5"):
        assert piece in out, piece
    missing = _run([str(LAUNCH / "slurm_gpu.sbatch"), "--dry-run"], env={"WORKDIR": "w"}, ok=False)
    assert missing.returncode != 0 and "set CONFIG" in missing.stderr


def test_tpu_vm_dry_run_verbs():
    env = {"TPU_NAME": "pod", "ZONE": "us-west4-a", "PROJECT": "proj", "ACCELERATOR_TYPE": "v5litepod-16",
           "CONFIG": "configs/tpu_pod.py", "WORKDIR": "gs://b/r"}
    script = str(LAUNCH / "tpu_vm.sh")
    create = _run([script, "--dry-run", "create"], env=env).stdout
    assert create.startswith("gcloud compute tpus tpu-vm create pod --zone=us-west4-a --project=proj")
    assert "--accelerator-type=v5litepod-16" in create
    train = _run([script, "--dry-run", "train", "--config.train.num_steps=5"], env=env).stdout
    assert "--worker=all" in train and "siamjax.cli\\ train\\ --config\\ configs/tpu_pod.py" in train
    assert "--config.train.num_steps=5" in train
    assert "tpu-vm delete pod" in _run([script, "--dry-run", "delete"], env=env).stdout
    bad = _run([script, "--dry-run", "explode"], env=env, ok=False)
    assert bad.returncode == 2 and "unknown verb" in bad.stderr


def test_gke_dry_run_renders_a_valid_jobset():
    env = {"IMAGE": "img:1", "NUM_HOSTS": "4", "CONFIG": "configs/tpu_pod.py", "WORKDIR": "gs://b/r",
           "NODE_SELECTOR_KEY": "cloud.google.com/gke-tpu-accelerator", "NODE_SELECTOR_VALUE": "tpu-v5-lite-podslice",
           "ACCELERATOR_RESOURCE": "google.com/tpu", "ACCELERATORS_PER_HOST": "4"}
    out = _run([str(LAUNCH / "gke_submit.sh"), "--dry-run"], env=env).stdout
    manifest, command = out.rsplit("\n", 2)[0], out.strip().splitlines()[-1]
    body = "\n".join(line for line in manifest.splitlines() if not line.lstrip().startswith("#"))
    assert command == "kubectl apply -f -" and "${" not in body
    doc = yaml.safe_load(manifest)
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert doc["kind"] == "JobSet" and job["parallelism"] == 4 and job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    assert container["image"] == "img:1" and container["resources"]["limits"] == {"google.com/tpu": 4}
    envs = {e["name"]: e for e in container["env"]}
    assert envs["SIAMJAX_COORDINATOR"]["value"] == "siamjax-train-workers-0-0.siamjax-train:12355"
    assert "job-completion-index" in envs["SIAMJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    env.pop("IMAGE")
    assert "set IMAGE" in _run([str(LAUNCH / "gke_submit.sh"), "--dry-run"], env=env, ok=False).stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_launchers_are_shellcheck_clean():
    scripts = sorted(str(p) for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_distributed_args_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("SIAMJAX_COORDINATOR", "host:1")
    monkeypatch.setenv("SIAMJAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("SIAMJAX_PROCESS_ID", "2")
    args = DistributedArgs.from_env(process_id=3)
    assert (args.coordinator, args.num_processes, args.process_id) == ("host:1", 4, 3)
    monkeypatch.setenv("SIAMJAX_NUM_PROCESSES", "four")
    with pytest.raises(ValueError, match="SIAMJAX_NUM_PROCESSES.*integer"):
        DistributedArgs.from_env()


def test_partial_or_out_of_range_distributed_args_are_errors(monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "JOBSET_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert detected_cluster() is None
    assert initialize(DistributedArgs()) is False  # a plain single process
    with pytest.raises(ValueError, match="needs all of --coordinator"):
        initialize(DistributedArgs(coordinator="localhost:1"))
    with pytest.raises(ValueError, match="outside 0..1"):
        initialize(DistributedArgs(coordinator="localhost:1", num_processes=2, process_id=2))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert detected_cluster() == "slurm"


def test_timeouts_from_env(monkeypatch):
    monkeypatch.setenv("SIAMJAX_HEARTBEAT_TIMEOUT", "7")
    monkeypatch.delenv("SIAMJAX_INIT_TIMEOUT", raising=False)
    args = DistributedArgs.from_env()
    assert (args.heartbeat_timeout_s, args.initialization_timeout_s) == (7, DistributedArgs().initialization_timeout_s)
    assert DistributedArgs.from_env(heartbeat_timeout_s=3).heartbeat_timeout_s == 3  # an argument wins
    monkeypatch.setenv("SIAMJAX_INIT_TIMEOUT", "0")
    with pytest.raises(ValueError, match="SIAMJAX_INIT_TIMEOUT must be a positive"):
        DistributedArgs.from_env()


def test_train_cli_reports_incomplete_multi_process_flags(tmp_path, capsys, monkeypatch):
    from siamjax.cli import main as cli_main

    for var in ("SIAMJAX_COORDINATOR", "SIAMJAX_NUM_PROCESSES", "SIAMJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    config = LAUNCH.parent / "configs" / "default.py"
    code = cli_main(["train", "--config", str(config), "--workdir", str(tmp_path), "--coordinator", "localhost:1",
                     "--num-processes", "2"])
    assert code == 2
    assert "config error: multi-process launch needs all of --coordinator" in capsys.readouterr().err


def test_multi_process_mesh_must_use_every_device(tmp_path, monkeypatch):
    import jax

    from siamjax.train.config import ConfigError
    from siamjax.train.config_checks import validate as validate_config
    from siamjax.train.config_file import load_config

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"anchor": "a", "positive": "b"}\n')
    overrides = ["--config.model.init.tokenizer=tok", f"--config.data.train.path={data}", "--config.train.batch_size=8"]
    config = load_config(str(LAUNCH.parent / "configs" / "default.py"), [*overrides, "--config.mesh.num_devices=4"])
    validate_config(config)  # one process may use a subset of its devices
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match="2-process job must use all 8 devices"):
        validate_config(config)
    validate_config(load_config(str(LAUNCH.parent / "configs" / "default.py"), overrides))


def test_train_cli_rejects_url_workdirs(capsys):
    from siamjax.cli import main as cli_main

    config = LAUNCH.parent / "configs" / "default.py"
    assert cli_main(["train", "--config", str(config), "--workdir", "gs://bucket/run"]) == 2
    assert "--workdir gs://bucket/run: URLs are not supported" in capsys.readouterr().err
