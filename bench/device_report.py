"""The Markdown tables `bench/device_check.py` writes (the form bench/RESULTS.md quotes).

Why separate: the device run's record is JSON; turning it into tables is pure formatting, tested
on the smoke run's record, and kept apart so device_check.py stays about what is measured.
"""
from __future__ import annotations


def _fmt(value, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def row_line(row: dict) -> str:
    """One progress line for a finished row."""
    keys = [k for k in ("shape", "attention", "seq_len", "batch") if k in row]
    head = " ".join(f"{k}={row[k]}" for k in keys)
    for key in ("skipped", "error", "refused", "status"):
        if key in row:
            return f"{head} {key}: {row[key]}"
    figures = [f"{k}={row[k]:.3g}" for k in ("mfu", "step_s", "ratio", "speedup_over_xla", "measured_step_s")
               if isinstance(row.get(k), float)]
    return f"{head} {' '.join(figures)}"


def _status(row: dict) -> str | None:
    for key in ("skipped", "error", "refused", "status"):
        if key in row:
            return f"{key}: {row[key]}"
    return None


def _mfu_table(rows: list[dict], title: str) -> list[str]:
    lines = [f"### {title}", "", "| shape | seq | batch (pairs) | rows x seq per side | attention | ms/step | "
             "pairs/s | model TFLOP/step | XLA TFLOP/step | TFLOP/s | MFU | peak device GiB | compile s | vs XLA |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = _status(r)
        head = f"| {r.get('shape', '')} | {r.get('seq_len', '')} | {r.get('batch', '')} |"
        if status:
            lines.append(f"{head} {status} |" + " |" * 10)
            continue
        peak = r.get("peak_device_bytes")
        lines.append(f"{head} {r['rows']} x {r['seq_len']} | {r['attention']} | {1e3 * r['step_s']:.1f} | "
                     f"{r['pairs_per_s']:.1f} | {r['model_flops'] / 1e12:.3f} | {r['xla_flops'] / 1e12:.3f} | "
                     f"{r['tflops']:.2f} | {100 * r['mfu']:.1f}% | {_fmt(peak and peak / 2**30, '.2f')} | "
                     f"{r['compile_s']:.1f} | {_fmt(r.get('speedup_over_xla'), '.2f')} |")
    return lines + [""]


def _train_table(rows: list[dict]) -> list[str]:
    lines = ["### Training, siamjax vs sentence-transformers (bf16, MNRL, AdamW, same pairs)", "",
             "| shape | batch | ST pairs/s | siamjax pairs/s | ratio | eval loss ST / siamjax | "
             "tokens/pair real / ST / siamjax | siamjax compile s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = _status(r)
        if status:
            lines.append(f"| {r['shape']} | {r['batch']} | {status} |" + " |" * 5)
            continue
        lines.append(f"| {r['shape']} | {r['batch_size']} | {r['torch_pairs_per_s']:.1f} | {r['jax_pairs_per_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['torch_eval_loss']:.4f} / {r['jax_eval_loss']:.4f} | "
                     f"{r['real_tokens_per_pair']:.1f} / {r['torch_tokens_per_pair']:.1f} / "
                     f"{r['jax_tokens_per_pair']:.1f} | {r['jax_compile_s']:.1f} |")
    return lines + [""]


def _encode_table(rows: list[dict]) -> list[str]:
    lines = ["### Encoding, siamjax vs sentence-transformers (bf16, STS-b test)", "",
             "| shape | batch | ST sent/s | siamjax sent/s | ratio | min cosine ST vs siamjax | "
             "Spearman ST / siamjax | siamjax first pass s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = _status(r)
        if status:
            lines.append(f"| {r['shape']} | | {status} |" + " |" * 5)
            continue
        lines.append(f"| {r['shape']} | {r['batch_size']} | {r['torch_sentences_per_s']:.1f} | "
                     f"{r['jax_sentences_per_s']:.1f} | {r['ratio']:.2f}x | {r['min_cosine']:.5f} | "
                     f"{r['torch_spearman']:.2f} / {r['jax_spearman']:.2f} | {r['first_pass_s']['jax']:.1f} |")
    return lines + [""]


def _plan_lines(rows: list[dict]) -> list[str]:
    lines = ["### `siamjax plan` vs measured", ""]
    for r in rows:
        status = _status(r)
        if status:
            lines.append(f"- {status}")
            continue
        peak = r.get("measured_peak_device_bytes")
        lines += [f"- plan: `{r['plan_command']}` (exit {r['plan_rc']})", "", "```", r["plan_output"].rstrip(), "```",
                  f"- measured (`{r['measure_command']}`, exit {r['measure_rc']}): peak device memory "
                  f"{_fmt(peak and peak / 2**30, '.2f')} GiB, step {_fmt(r.get('measured_step_s') and 1e3 * r['measured_step_s'])} ms"]
    return lines + [""]


def markdown(record: dict) -> str:
    """All of a device_check record's tables, with the environment line they depend on."""
    env = record["environment"]
    lines = [f"## device_check{' --smoke' if record.get('smoke') else ''}: {env['device']}, {env['date']}", "",
             f"`{record['command']}`; jax {env['jax']}, torch {env['torch']} ({env['torch_device']}), "
             f"sentence-transformers {env['sentence_transformers']}; peak {env['peak_tflops']:.1f} TFLOP/s bf16 "
             f"({env['peak_source']}); load average {env['load_avg_1m']:.1f} -> {env.get('load_avg_1m_end', 0):.1f}; "
             f"{record['total_s']:.0f} s in all", ""]
    lines += _mfu_table(record["mfu"], "MFU of the train step (bf16, packed rows of 4 texts, XLA attention)")
    lines += _train_table(record["train"]) + _encode_table(record["encode"])
    lines += _mfu_table(record["attention"], "Fused attention kernels vs XLA (same steps)")
    lines += _plan_lines(record["plan"])
    return "\n".join(lines)
