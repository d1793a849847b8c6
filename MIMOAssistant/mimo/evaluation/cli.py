"""``mimo-assistant eval --model PATH --data FOLDER_OR_MANIFEST --out report.json``.

    mimo-assistant eval --model runs/mimo-tiny-cpu/final --data ../shared/data/open2d/manifest.jsonl \\
        --out reports/mimo-tiny/report.json [--split test | val,test] [--max-per-dataset 20] [--datasets busi,kvasir_seg]
        [--perspectives text_seg,box_seg] [--baselines litemedsam,text | none] [--cache-dir DIR] [--device auto]

Writes ``report.json``, ``report.md`` and ``report.png`` (Dice per target, model vs baselines).
The report records the command line (every option spelled out), the model's weights SHA-256,
the data's path and the versions, so the same command reproduces it (greedy decoding, a fixed
choice of images). Exit status 0, or 2 with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
from pathlib import Path

BASELINES = ("litemedsam", "text")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="MIMO checkpoint folder (e.g. OUTPUT/final of mimo-assistant train)")
    parser.add_argument("--data", required=True, help="data-builder folder (samples.jsonl) or an open2d-format manifest.jsonl")
    parser.add_argument("--out", required=True, help="report.json to write (report.md and report.png go beside it)")
    parser.add_argument("--split", default="test", help="train, val, test, several comma-separated (val,test: everything held out) "
                                                      "or all (default test; manifests: split by id hash)")
    parser.add_argument("--max-per-dataset", type=int, default=None, metavar="N",
                        help="at most N images per dataset (a fixed choice; with several splits, N from each)")
    parser.add_argument("--datasets", help="comma-separated datasets to keep (default all)")
    parser.add_argument("--perspectives", help="comma-separated perspectives to keep (default all)")
    parser.add_argument("--baselines", default="litemedsam,text",
                        help="comma-separated: litemedsam (LiteMedSAM with the same box), text (the model without prompts); or none")
    parser.add_argument("--cache-dir", help="read and write encoded images in this feature cache (default: encode in memory, float32)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of images with --max-per-dataset")
    parser.add_argument("--box-decoder-weight", type=float, default=None, metavar="W",
                        help="masks answering a box or lasso: W x the fine-tuned decoder + (1 - W) x the pretrained one, "
                             "instead of the checkpoint's setting (choose W on the validation split)")
    # mimo.training.samples.REFERENCE_BOX_MARGIN_PX, spelt out: importing it here would load numpy
    # and the data code at every mimo-assistant start (a test keeps the two equal)
    parser.add_argument("--box-margin", type=float, default=3.0, metavar="PX",
                        help="the comparisons' box: each reference mask's bounding box grown by PX pixels on every side "
                             "(default 3: a tight box; larger values measure how each system copes with a loose, hand-drawn one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this report, every option spelled out."""
    parts = ["mimo-assistant", "eval", "--model", str(args.model), "--data", str(args.data), "--out", str(args.out),
             "--split", args.split, "--baselines", args.baselines, "--device", args.device,
             "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed),
             "--box-margin", f"{args.box_margin:g}"]
    for option in ("max_per_dataset", "datasets", "perspectives", "cache_dir", "box_decoder_weight"):
        value = getattr(args, option, None)
        if value is not None:
            parts += ["--" + option.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _split_list(text: str | None) -> list[str] | None:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return items or None


def evaluate(args: argparse.Namespace, model=None, litemedsam=None, log=print) -> dict:
    """Run the evaluation the arguments describe; returns the report (already written).

    ``model`` / ``litemedsam`` replace the predictors built from the arguments (tests pass a
    :class:`~.predictors.ReferencePredictor` to check that perfect answers score perfectly).
    """
    import platform

    from .. import __version__
    from ..errors import MimoError
    from ..training.samples import DataError, is_manifest, load_examples
    from .predictors import LiteMedSAMPredictor, MimoPredictor
    from .report import write_report
    from .runner import aggregate, aggregate_comparisons, run_evaluation

    baselines = set(_split_list(args.baselines) or [])
    if baselines - set(BASELINES) - {"none"}:
        raise MimoError(f"--baselines takes {', '.join(BASELINES)} or none, got {args.baselines!r}")
    data = Path(args.data)
    splits = [None] if args.split == "all" else _split_list(args.split)
    if not splits or any(s not in (None, "train", "val", "test") for s in splits) or len(set(splits)) < len(splits):
        raise MimoError(f"--split must be train, val, test (or several of them, comma-separated, each once) or all, got {args.split!r}")
    box_margin = args.box_margin
    if not (math.isfinite(box_margin) and 0 <= box_margin <= 1000):
        raise MimoError(f"--box-margin must be a number of pixels from 0 to 1000, got {box_margin!r}")
    examples = [e for split in splits for e in load_examples(data, split, _split_list(args.datasets), args.max_per_dataset, args.seed)]
    perspectives = _split_list(args.perspectives)
    if perspectives:
        examples = [e for e in examples if e.perspective in perspectives]
    examples = [e for e in examples if e.answer is not None]
    if not examples:
        raise DataError(f"no samples to evaluate in {data} (split {args.split}, datasets {args.datasets}, perspectives {args.perspectives})")
    if model is None:
        model = MimoPredictor(args.model, args.device, args.max_new_tokens, args.cache_dir, getattr(args, "box_decoder_weight", None))
    if litemedsam is None and "litemedsam" in baselines:
        litemedsam = LiteMedSAMPredictor(args.device)
    log(f"evaluating {len(examples)} samples on {len({e.image for e in examples})} images from {data}")
    result = run_evaluation(examples, model, litemedsam if "litemedsam" in baselines else None, "text" in baselines,
                            box_margin=box_margin, progress=not getattr(args, "no_progress", False), log=log)
    import torch
    import transformers

    comparison = aggregate_comparisons(result.comparisons, box_margin)
    report = {
        "format": "mimo-eval-report",
        "format_version": 1,
        "command": command_line(args),
        "argv": list(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"mimo": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "model": model.describe() if hasattr(model, "describe") else {"path": str(args.model), "preset": getattr(model, "name", "?")},
        "data": {
            "path": str(data.resolve()),
            "kind": "manifest" if is_manifest(data) or (data / "manifest.jsonl").is_file() else "data-builder folder",
            "split": args.split,
            "max_per_dataset": args.max_per_dataset,
            "datasets": sorted({e.dataset for e in examples}),
            "examples": len(examples),
            "images": len({e.image for e in examples}),
            "perspectives": sorted({e.perspective for e in examples}),
        },
        "metrics": aggregate(result.items),
        "baselines": comparison,
        "timings": result.timings,
        "items": result.items,
        "comparisons": result.comparisons,
    }
    written = write_report(report, args.out)
    log("wrote " + ", ".join(str(p) for p in written.values()))
    return report


def run_eval(args: argparse.Namespace) -> int:
    from ..errors import MimoError

    try:
        evaluate(args)
    except MimoError as error:
        print(f"mimo-assistant: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mimo-assistant eval", description="Evaluate a MIMO checkpoint with baselines.")
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
