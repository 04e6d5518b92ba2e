"""`siamjax plan` with the TPU compiler: libtpu's HLO dialect (loops without trip-count
annotations, matmuls as padded convolutions), slice names, the `--compiler` errors, and, where
libtpu is installed, a TPU-compiled plan against the XLA:CPU one of the same step.

The TPU compile runs only where libtpu is installed (`pip install "jax[tpu]"`); CI has none, so
there the parser is checked on a hand-written program in the TPU compiler's style.
"""
import importlib.util
import pathlib

import jax
import pytest

from siamjax.cli import main as cli_main
from siamjax.cli.plan_cmd import tpu_devices
from siamjax.parallel.hlo import program_stats
from siamjax.train.accelerators import get_accelerator
from siamjax.train.config import default_config
from siamjax.train.plan import plan_run, report

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

# What the TPU compiler writes for x[64,1024] @ w[1024,256] inside a 4-iteration loop: the
# matmul as a convolution over a zero-padded spatial axis (window 2 over 1 real + 2 padding
# elements: half the window positions read padding), the loop bound as `i < 4`, and a weight
# all-gather over 8 devices.
TPU_STYLE_HLO = """
HloModule step

%body (p: (s32[], bf16[64,1024,1], bf16[1024,2,128,1])) -> (s32[], bf16[64,1024,1], bf16[1024,2,128,1]) {
  %p = (s32[], bf16[64,1024,1]{2,1,0}, bf16[1024,2,128,1]{3,2,1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %x = bf16[64,1024,1]{2,1,0:T(8,128)} get-tuple-element(%p), index=1
  %w = bf16[1024,2,128,1]{3,2,1,0} get-tuple-element(%p), index=2
  %shard = bf16[128,2,128,1]{3,2,1,0} slice(%w), slice={[0:128], [0:2], [0:128], [0:1]}
  %ag = bf16[1024,2,128,1]{3,2,1,0} all-gather(%shard), replica_groups=[1,8]<=[8], dimensions={0}
  %y = bf16[64,2,128]{2,1,0:T(8,128)(2,1)} convolution(%x, %ag), window={size=2 pad=1_1 rhs_reversal=1}, dim_labels=bf0_i0o->b0f, metadata={op_name="dot_general"}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], bf16[64,1024,1], bf16[1024,2,128,1]) tuple(%next, %x, %ag)
}

%cond (q: (s32[], bf16[64,1024,1], bf16[1024,2,128,1])) -> pred[] {
  %limit = s32[]{:T(128)} constant(4)
  %q = (s32[], bf16[64,1024,1]{2,1,0}, bf16[1024,2,128,1]{3,2,1,0}) parameter(0)
  %j = s32[]{:T(128)} get-tuple-element(%q), index=0
  ROOT %lt = pred[]{:T(512)} compare(%j, %limit), direction=LT, metadata={op_name="while/cond/lt"}
}

ENTRY %main (a: bf16[64,1024,1], b: bf16[1024,2,128,1]) -> bf16[64,1024,1] {
  %a = bf16[64,1024,1]{2,1,0} parameter(0)
  %b = bf16[1024,2,128,1]{3,2,1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[64,1024,1], bf16[1024,2,128,1]) tuple(%zero, %a, %b)
  %loop = (s32[], bf16[64,1024,1], bf16[1024,2,128,1]) while(%init), condition=%cond, body=%body
  ROOT %out = bf16[64,1024,1]{2,1,0} get-tuple-element(%loop), index=1
}
"""


# HBM traffic as the TPU compiler lays a program out: an all-gather as async collective kernels
# (start; a kernel computing beside it, the buffers passed through; done), each repeating the
# collective with its channel id; a prefetch into VMEM
# (S(1)) by async copy, a slice fetched into VMEM, a kernel entirely in VMEM, and a copy back.
TPU_TRAFFIC_HLO = """
HloModule traffic

%wait (a: bf16[64,128], b: bf16[512,128]) -> bf16[512,128] {
  %a = bf16[64,128]{1,0} parameter(0)
  %b = bf16[512,128]{1,0} parameter(1)
  %ag2 = bf16[512,128]{1,0} all-gather(%a), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %cc = bf16[512,128]{1,0} custom-call(%a, %b, %ag2), custom_call_target="AsyncCollectiveDone"
}

%gather (c: bf16[64,128]) -> (bf16[64,128], bf16[512,128]) {
  %c = bf16[64,128]{1,0} parameter(0)
  %ag1 = bf16[512,128]{1,0} all-gather(%c), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %cs = (bf16[64,128]{1,0}, bf16[512,128]{1,0}) custom-call(%ag1), custom_call_target="AsyncCollectiveStart"
}

%overlap (d: bf16[64,128], e: bf16[512,128], f: s32[8]) -> (s32[8], bf16[64,128], bf16[512,128]) {
  %d = bf16[64,128]{1,0} parameter(0)
  %e = bf16[512,128]{1,0} parameter(1)
  %f = s32[8]{0:S(1)} parameter(2)
  %ag3 = bf16[512,128]{1,0} all-gather(%d), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  %g = s32[8]{0:S(1)} add(%f, %f)
  ROOT %o = (s32[8]{0:S(1)}, bf16[64,128]{1,0}, bf16[512,128]{1,0}) tuple(%g, %d, %e)
}

%double (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0:S(1)} parameter(0)
  ROOT %y = f32[1024]{0:S(1)} add(%x, %x)
}

ENTRY %main (w: bf16[64,128], v: f32[4096], ids: s32[8]) -> (bf16[512,128], f32[1024]) {
  %w = bf16[64,128]{1,0} parameter(0)
  %v = f32[4096]{0} parameter(1)
  %start = (bf16[64,128]{1,0}, bf16[512,128]{1,0}) fusion(%w), kind=kCustom, calls=%gather
  %s0 = bf16[64,128]{1,0} get-tuple-element(%start), index=0
  %s1 = bf16[512,128]{1,0} get-tuple-element(%start), index=1
  %ids = s32[8]{0:S(1)} parameter(2)
  %busy = (s32[8]{0:S(1)}, bf16[64,128]{1,0}, bf16[512,128]{1,0}) fusion(%s0, %s1, %ids), kind=kOutput, output_to_operand_aliasing={{1}: (0, {}), {2}: (1, {})}, calls=%overlap
  %b1 = bf16[64,128]{1,0} get-tuple-element(%busy), index=1
  %b2 = bf16[512,128]{1,0} get-tuple-element(%busy), index=2
  %done = bf16[512,128]{1,0} fusion(%b1, %b2), kind=kCustom, calls=%wait
  %cp = (f32[4096]{0:S(1)}, f32[4096]{0}, u32[]{:S(2)}) copy-start(%v)
  %inv = f32[4096]{0:S(1)} copy-done(%cp)
  %sl = ((f32[4096]{0}), f32[1024]{0:S(1)}, s32[]{:S(2)}) slice-start(%v), slice={[0:1024]}
  %piece = f32[1024]{0:S(1)} slice-done(%sl)
  %twice = f32[1024]{0:S(1)} fusion(%piece), kind=kLoop, calls=%double
  %out = f32[1024]{0} copy(%twice)
  ROOT %r = (bf16[512,128]{1,0}, f32[1024]{0}) tuple(%done, %out)
}
"""


def test_tpu_traffic_counts_hbm_only_and_each_async_move_once():
    stats = program_stats(TPU_TRAFFIC_HLO, 8)
    gathered, shard = 512 * 128 * 2, 64 * 128 * 2
    assert stats.collective_bytes["all-gather"] == 7 / 8 * gathered  # once, not once per kernel
    # the gather reads its shard and writes the full weight; the prefetch reads v once; the slice
    # reads its 1,024 floats; the doubling stays in VMEM; the copy back writes 1,024 floats
    assert stats.hbm_bytes == (shard + gathered) + 4096 * 4 + 1024 * 4 + 0 + 1024 * 4


def test_tpu_style_loops_and_padded_convolutions():
    stats = program_stats(TPU_STYLE_HLO, 8)
    assert stats.unknown_trip_counts == 0
    assert stats.matmul_flops == 4 * 2 * 64 * 1024 * 256  # 4 iterations, padding not counted
    assert stats.collective_bytes["all-gather"] == 4 * 7 / 8 * 1024 * 256 * 2


def test_slice_names_and_compiler_errors(capsys):
    assert get_accelerator("v5e").topology(64) == "v5e:8x8"
    assert get_accelerator("v5p").topology(8) == "v5p:2x2x2"
    with pytest.raises(ValueError, match="no 6-chip TPU slice"):
        get_accelerator("v6e").topology(6)
    plan = ["plan", "--config", str(CONFIGS / "stsb_minilm.py"), "--compiler", "tpu"]
    assert cli_main([*plan, "--devices", "8", "--accelerator", "h100"]) == 2
    assert "--compiler tpu: --accelerator h100 is not a TPU" in capsys.readouterr().err
    if not HAS_LIBTPU:
        assert cli_main([*plan, "--devices", "8", "--accelerator", "v5e"]) == 2
        assert "--compiler tpu needs libtpu" in capsys.readouterr().err
    assert cli_main([*plan, "--devices", "6", "--accelerator", "v5e"]) == 2
    err = capsys.readouterr().err
    assert "--devices 6" in err and "no 6-chip" in err or "needs libtpu" in err


def _tiny(minilm_dir):
    """A 2-layer, hidden-128 GradCache step on a 4-chip FSDP mesh."""
    c = default_config()
    c.model.init.tokenizer = str(minilm_dir)
    c.model.init.update(dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                             max_position_embeddings=64))
    c.model.max_seq_length = 32
    c.data.buckets = (32,)
    c.train.batch_size = 32
    c.train.grad_cache_chunk = 8
    c.model.remat = True
    c.mesh.data, c.mesh.fsdp = 1, 4
    c.model.attention = "xla"  # the same program for both compilers
    return c


def test_a_step_the_compiler_refuses_does_not_fit(minilm_dir, monkeypatch):
    """The TPU compiler stops at a program larger than HBM (libtpu's message, as it words it):
    the plan says "does not fit" with the compiler's numbers and the knobs, never an internal error."""
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(17.63G) exceeds available HBM (15.75G).")

    def refuse(self, compiler_options=None):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(jax.stages.Lowered, "compile", refuse)
    c = _tiny(minilm_dir)
    plan = plan_run(c, get_accelerator("v5e"), jax.devices()[:4])
    assert not plan.fits and plan.compiled is None
    assert plan.temp_bytes == int(17.63 * 2**30) and plan.peak_bytes > plan.temp_bytes
    text = report(plan, c)
    assert "does not fit (the compiler needs 17.63 GiB of temporaries, 15.75 available); try: " in text
    assert "model.param_dtype=bfloat16" not in text and "train.grad_cache_chunk=4" in text
    assert "not known, the compiler refused the step (RESOURCE_EXHAUSTED: Ran out of memory" in text


@pytest.mark.skipif(not HAS_LIBTPU, reason="the TPU compiler needs libtpu (pip install 'jax[tpu]')")
def test_tpu_compiled_plan_agrees_with_the_cpu_one(minilm_dir):
    """The same tiny step compiled by XLA:CPU (4 fake devices) and by the TPU compiler for a
    v5e-4 slice: the same matmul FLOPs (the TPU's convolutions parsed, its loops counted) up to
    what the compilers simplify differently (XLA:CPU drops part of GradCache's first-pass
    products that the TPU compiler keeps: 4.4% of the step here, every backward product equal)."""
    c = _tiny(minilm_dir)
    accelerator = get_accelerator("v5e")
    cpu = plan_run(c, accelerator, jax.devices()[:4])
    tpu = plan_run(c, accelerator, tpu_devices(accelerator, 4))
    assert cpu.flops <= tpu.flops <= 1.06 * cpu.flops, (tpu.flops, cpu.flops)
    assert 0 < tpu.temp_bytes and tpu.peak_bytes < accelerator.hbm_bytes
    assert tpu.param_bytes == cpu.param_bytes and tpu.opt_state_bytes == cpu.opt_state_bytes
    c.model.attention = "auto"  # on the TPU compiler: the splash kernel itself (Mosaic), never the [L, L] scores
    splash = plan_run(c, accelerator, tpu_devices(accelerator, 4))
    assert splash.attention == splash.compiled_attention == "splash"
    assert "tpu_custom_call" in splash.compiled.as_text()  # the Mosaic kernel
    # (its memory saving needs real lengths: these 32-token rows are padded to splash's 128-token
    # blocks; bench/RESULTS.md has a 512-token comparison)
