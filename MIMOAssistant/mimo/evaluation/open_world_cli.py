"""``mimo-assistant eval-open``: the open-world report (:mod:`.open_world`).

    mimo-assistant eval-open --model MIMOAssistant/mimo/resources/mimo-tiny --data mimoseg-open \\
        --split test --ood mni152-build --out open-world/report.json [--max-per-dataset 6] [--photographs]

Writes ``report.json`` (every row, the summaries at the checkpoint's thresholds and the
trade-off curve over thresholds chosen on ``--val-split``) and ``report.md`` beside it. Exit
status 0, or 2 with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path


def add_eval_open_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="MIMO checkpoint folder with a request reader and familiarity index")
    parser.add_argument("--data", required=True, help="data-builder folder of the in-domain data (samples.jsonl)")
    parser.add_argument("--split", default="test", help="in-domain split to evaluate (default test)")
    parser.add_argument("--val-split", default="val", help="split the trade-off curve's thresholds are chosen on (default val)")
    parser.add_argument("--ood", action="append", default=[], help="data-builder folder of a dataset the model never trained on (repeatable; every split is used)")
    parser.add_argument("--photographs", action="store_true", help="also ask about scikit-image's sample photographs (no medical content)")
    parser.add_argument("--max-per-dataset", type=int, default=6, help="reference masks per dataset and source (default 6)")
    parser.add_argument("--ood-per-dataset", type=int, default=40, help="reference masks per held-out (--ood) dataset (default 40)")
    parser.add_argument("--val-per-dataset", type=int, default=12, help="validation masks per dataset for the trade-off curve (default 12)")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: the training cache)")
    parser.add_argument("--out", required=True, help="report.json to write (report.md goes beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")


def run_eval_open(args, log=print) -> dict:
    from ..training.samples import load_examples
    from . import open_world as ow

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists (give --overwrite to replace it)")
    if min(args.max_per_dataset, args.val_per_dataset, args.ood_per_dataset) < 1:
        raise SystemExit("error: --max-per-dataset, --ood-per-dataset and --val-per-dataset must be at least 1")
    for folder in [args.data, *args.ood]:
        if not (Path(folder) / "samples.jsonl").is_file():
            raise SystemExit(f"error: {folder} is not a data-builder folder (no samples.jsonl)")
    asker = ow.Asker.load(args.model, args.cache_dir)
    if asker.full.reader is None or asker.full.familiarity is None:
        raise SystemExit(f"error: {args.model} has no request reader or familiarity index (run mimo-assistant understand)")
    test = load_examples(args.data, args.split)
    val = load_examples(args.data, args.val_split, max_images_per_dataset=args.val_per_dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    rows: dict[str, list[dict]] = {"phrasings": [], "naming": [], "negatives": [], "modality": []}

    def stage(key: str, found: list[dict]) -> None:
        rows[key] += found
        partial.write_text(json.dumps(rows, default=str))  # a long run that stops keeps what it measured

    stage("phrasings", ow.phrasing_rows(asker, test, args.max_per_dataset, log))
    stage("naming", ow.naming_rows(asker, test, args.max_per_dataset, "in-domain", log))
    stage("negatives", ow.negative_rows(asker, test, args.max_per_dataset, log))
    for folder in args.ood:
        stage("naming", ow.naming_rows(asker, load_examples(folder, None), args.ood_per_dataset, f"held-out:{Path(folder).name}", log,
                                       families=False))
    if args.photographs:
        naming, modality = ow.photograph_rows(asker, log)
        stage("naming", naming)
        stage("modality", modality)
    stage("modality", ow.modality_rows(asker, test, args.max_per_dataset))
    naming_val = ow.naming_rows(asker, val, None, "in-domain", log, families=False)
    segments_val = ow.canonical_segment_rows(asker, val, None, log)
    decided = ow.apply_thresholds(rows, asker.thresholds)
    report = {
        "command": "mimo-assistant eval-open " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None,
        "date": datetime.date.today().isoformat(),
        "model": str(Path(args.model).resolve()),
        "thresholds": asker.thresholds.__dict__,
        "summary": ow.summarise(decided),
        "modality": ow.summarise_modality(rows["modality"], asker.thresholds),
        "trade_off": ow.trade_off(rows, naming_val, segments_val),
        "rows": decided,
    }
    out.write_text(json.dumps(report, indent=1, default=str))
    partial.unlink()
    out.with_suffix(".md").write_text(ow.render_markdown(report))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def main(args) -> int:
    try:
        run_eval_open(args)
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 2
    return 0
