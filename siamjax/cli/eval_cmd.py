"""`siamjax eval {sts,retrieval,triplet,binary,paraphrase} --model DIR --data FILE|DIR`.

Runs one evaluator from `siamjax.evaluation` and prints its metrics as a table (x100; thresholds
in similarity / distance units); `--output FILE.json` also writes them.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from siamjax import evaluation as ev
from siamjax.cli.errors import EXIT_OK, run_verb
from siamjax.cli.model_args import add_model_args, check_output_file, embed_texts, load_encoder
from siamjax.data.readers import PAIR_FORMATS
from siamjax.data.records import ON_BAD_ROW_CHOICES

TASKS = {
    "sts": "Pearson/Spearman of cosine, dot, Euclidean, Manhattan similarity vs gold scores "
           "(STS-b, SICK, or csv/tsv/jsonl with sentence1, sentence2, score)",
    "retrieval": "MRR@10, nDCG@10, Accuracy/Precision/Recall@k, MAP@100 on a BEIR folder "
                 "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv)",
    "triplet": "triplet accuracy (csv/tsv/jsonl with anchor, positive, negative)",
    "binary": "best-threshold accuracy, F1 and average precision for duplicate detection "
              "(csv/tsv/jsonl with sentence1, sentence2, label 0/1)",
    "paraphrase": "paraphrase mining over the distinct sentences of a labelled pair file, "
                  "scored against its label-1 pairs",
}


def _columns(spec: str) -> dict[str, str]:
    """'score=label,sentence1=text_a' -> {'score': 'label', 'sentence1': 'text_a'}."""
    out = {}
    for item in spec.split(","):
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN[,FIELD=COLUMN...], got {spec!r}")
        out[field.strip()] = column.strip()
    return out


def _score_range(spec: str) -> tuple[float, float]:
    """'0,5' -> (0.0, 5.0), low < high."""
    try:
        low, high = (float(x) for x in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {spec!r}") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH, got {spec!r}")
    return low, high


def add_parser(subparsers) -> None:
    """Register `siamjax eval` and its tasks."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model (sts, retrieval, triplet, binary, paraphrase)",
        description="Evaluate a sentence-embedding model on a data file and print its metrics.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    for task, text in TASKS.items():
        t = tasks.add_parser(task, help=text.split(" (")[0], description=text)
        add_model_args(t)
        if task == "retrieval":
            t.add_argument("--data", required=True, help="BEIR folder")
            t.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
            t.add_argument("--score", choices=("cosine", "dot"), default="cosine", help="search score")
            t.add_argument("--on-bad-row", choices=ON_BAD_ROW_CHOICES, default="error",
                           help="a qrels line naming an unknown query/document id: error (default) or "
                                "skip and count it")
        else:
            t.add_argument("--data", required=True, help="data file (.csv, .tsv, .jsonl; STS-b/SICK for sts)")
            formats = PAIR_FORMATS if task == "sts" else tuple(f for f in PAIR_FORMATS if f not in ("stsb", "sick"))
            t.add_argument("--format", choices=formats, default="auto", help="file layout (default: detect)")
            t.add_argument("--columns", type=_columns, metavar="FIELD=COLUMN,...",
                           help="map fields to the file's column names, e.g. score=label")
            if task == "sts":
                t.add_argument("--score-range", type=_score_range, metavar="LOW,HIGH",
                               help="allowed gold scores of csv/tsv/jsonl files (default 0,5; STS-b and "
                                    "SICK use their own); a score outside is an error naming its line")
        t.add_argument("--output", help="also write the metrics to this .json file")
        t.set_defaults(func=run)


def _evaluator(args):
    if args.task == "retrieval":
        return ev.RetrievalEvaluator.from_beir(args.data, args.split, on_bad_row=args.on_bad_row,
                                               scores=(args.score,), show_progress=not args.quiet)
    cls = {"sts": ev.STSEvaluator, "triplet": ev.TripletEvaluator, "binary": ev.BinaryClassificationEvaluator,
           "paraphrase": ev.ParaphraseMiningEvaluator}[args.task]
    extra = {"score_range": args.score_range} if args.task == "sts" else {}
    return cls.from_file(args.data, format=args.format, columns=args.columns, **extra)


def _size(evaluator, task: str) -> str:
    if task == "retrieval":
        return f"{len(evaluator.queries)} queries, {len(evaluator.corpus)} documents"
    if task == "triplet":
        return f"{len(evaluator.anchors)} triplets"
    if task == "paraphrase":
        return f"{len(evaluator.sentences)} sentences, {len(evaluator.gold)} duplicate pairs"
    return f"{len(evaluator.sentences1)} pairs"


def format_table(metrics: dict[str, float], task: str) -> str:
    """Metrics as an aligned table: STS rows are similarities (Pearson, Spearman columns); other
    tasks put the metric in rows and the similarity / score function in columns."""
    if task == "sts":
        sims = list(dict.fromkeys(k.split("_", 1)[1] for k in metrics))
        rows = [(s, [metrics[f"pearson_{s}"], metrics[f"spearman_{s}"]]) for s in sims]
        header = ["similarity", "Pearson", "Spearman"]
    elif task == "paraphrase":
        rows = [(k, [v]) for k, v in metrics.items()]
        header = ["metric", "value"]
    else:
        cols = list(dict.fromkeys(k.split("_", 1)[0] for k in metrics))
        names = list(dict.fromkeys(k.split("_", 1)[1] for k in metrics))
        rows = [(n, [metrics[f"{c}_{n}"] for c in cols]) for n in names]
        header = ["metric", *cols]
    width = max(len(header[0]), *(len(r) for r, _ in rows))
    lines = [f"{header[0]:<{width}}" + "".join(f"{h:>12}" for h in header[1:])]
    for name, vals in rows:
        digits = 4 if "threshold" in name else 2  # thresholds are raw scores, the rest x100
        lines.append(f"{name:<{width}}" + "".join(f"{v:>12.{digits}f}" for v in vals))
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    check_output_file(args.output, "--output")
    evaluator = _evaluator(args)  # read the data first: a bad file fails before the model loads
    metrics = evaluator(embed_texts(load_encoder(args), args))
    print(f"{args.task}: {args.data} ({_size(evaluator, args.task)}), model {args.model}")
    skipped = getattr(evaluator, "skipped_qrels", [])
    if skipped:
        print(f"skipped {len(skipped)} qrels line(s) naming unknown ids (--on-bad-row skip); first: "
              f"{skipped[0].path}:{skipped[0].line}: {skipped[0].reason}")
    print(format_table(metrics, args.task))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax eval TASK`."""
    return run_verb(f"eval {args.task}", lambda: _eval(args), debug=args.debug)
