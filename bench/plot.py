"""Render the benchmark JSON results as the PNG charts embedded in bench/RESULTS.md.

Why: a ratio is easier to judge as a bar against the 1.0 (parity) and 1.5 (target) lines, and
MFU as a curve over batch size. Reads what the benchmark scripts wrote with `--json`:

    python bench/plot.py                      # bench/results/*.json -> bench/throughput.png, bench/mfu.png
    python bench/plot.py --results DIR --out DIR
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
TARGET_RATIO = 1.5


def load(path: pathlib.Path) -> dict | None:
    """The JSON a benchmark wrote, or None when that benchmark has not been run."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if "results" not in data:
        raise ValueError(f"{path}: not a benchmark result (no 'results' field)")
    return data


def ratio_bars(train: dict | None, encode: dict | None) -> list[tuple[str, float, float, float, bool]]:
    """(label, siamjax/ST ratio, ST throughput, siamjax throughput, is_padded) per setting.

    siamjax without packing (train_throughput.py --padded) gets separate, hatched bars.
    """
    bars = []
    for r in (train or {}).get("results", []):
        bars.append((f"train\nbatch {r['batch_size']}", r["ratio"], r["torch_pairs_per_s"], r["jax_pairs_per_s"],
                     False))
    for r in (train or {}).get("results", []):
        if "jax_padded_ratio" in r:
            bars.append((f"train\nbatch {r['batch_size']}\nno packing", r["jax_padded_ratio"],
                         r["torch_pairs_per_s"], r["jax_padded_pairs_per_s"], True))
    for r in (encode or {}).get("results", []):
        bars.append((f"encode\nbatch {r['batch_size']}", r["ratio"], r["torch_sentences_per_s"],
                     r["jax_sentences_per_s"], False))
    return bars


def plot_throughput(bars, out: pathlib.Path) -> pathlib.Path:
    """Bar chart of siamjax / sentence-transformers throughput ratios with parity and target lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * max(len(bars), 2) + 2, 4))
    labels = [b[0] for b in bars]
    ratios = [b[1] for b in bars]
    colors = ["tab:green" if r >= TARGET_RATIO else "tab:orange" if r >= 1 else "tab:red" for r in ratios]
    ax.bar(range(len(bars)), ratios, color=colors)
    for i, bar in enumerate(bars):
        if bar[4]:
            ax.bar(i, bar[1], color="white", edgecolor=colors[i], hatch="//", lw=1.5)
    for i, (_, ratio, st, sj, _) in enumerate(bars):
        ax.text(i, ratio, f"{ratio:.2f}x\n{sj:.0f} vs {st:.0f}/s", ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="black", lw=1, label="parity")
    ax.axhline(TARGET_RATIO, color="tab:green", lw=1, ls="--", label=f"target {TARGET_RATIO}x")
    ax.set_xticks(range(len(bars)), labels)
    ax.set_ylabel("siamjax / sentence-transformers")
    ax.set_ylim(0, max(ratios + [TARGET_RATIO]) * 1.3)
    ax.set_title("siamjax vs sentence-transformers on CPU (pairs/s train, sentences/s encode)\n"
                 "hatched: siamjax padding to buckets instead of packing (data.pack_length=0)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def mfu_series(runs: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """'device / model / dtype' -> [(batch, MFU %)] sorted by batch."""
    series: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        device = run["environment"]["device"]
        for r in run["results"]:
            key = f"{device} / {r['model']} / {r['dtype']}{' remat' if r.get('remat') else ''}"
            series.setdefault(key, []).append((r["batch"], 100 * r["mfu"]))
    return {k: sorted(v) for k, v in series.items()}


def plot_mfu(series, out: pathlib.Path) -> pathlib.Path:
    """MFU (%) against batch size, one line per device/model/dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (pairs, seq 128)")
    ax.set_ylabel("MFU % (CPU: of the measured matmul peak)")
    ax.set_ylim(bottom=0)
    ax.set_title("Train-step model FLOPs utilisation")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render(results_dir: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write every chart whose data exists; returns the files written."""
    written = []
    bars = ratio_bars(load(results_dir / "train.json"), load(results_dir / "encode.json"))
    if bars:
        written.append(plot_throughput(bars, out_dir / "throughput.png"))
    mfu_runs = [run for p in sorted(results_dir.glob("mfu*.json")) if (run := load(p))]
    if mfu_runs:
        written.append(plot_mfu(mfu_series(mfu_runs), out_dir / "mfu.png"))
    return written


def main(argv=None) -> int:
    """CLI: render the charts and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    written = render(pathlib.Path(args.results), pathlib.Path(args.out))
    if not written:
        print(f"no results in {args.results}: run the benchmarks with --json first", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
