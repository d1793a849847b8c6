"""``mimo-assistant understand``: give a MIMO checkpoint its request reader and familiarity index.

    mimo-assistant understand --model CHECKPOINT --data mimoseg-open --out CHECKPOINT2

1. trains the request reader's heads on the request grammar (:mod:`.reader_training`), with the
   checkpoint's training vocabulary (the target names of the data's train split);
2. fills the familiarity index with descriptors of train-split images and masks (at most
   ``--train-images`` per dataset, encoded through the feature cache);
3. chooses the answer thresholds on the **validation** split (``--val-images`` per dataset): the
   naming thresholds together keep ``--keep`` of the correct names (each signal its own share,
   the smallest that reaches it), the grounding threshold the same share of the text-only masks
   that hit their target.

``--out`` gets a copy of the checkpoint with ``request_reader.*`` and ``familiarity.*`` added
(it must not exist, or be the checkpoint itself with ``--overwrite``). Exit status 0, or 2 with
a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

UNDERSTANDING_FILES = ("request_reader.json", "request_reader.safetensors", "familiarity.json", "familiarity.safetensors")


def add_understand_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="MIMO checkpoint folder")
    parser.add_argument("--data", required=True, help="data-builder folder (samples.jsonl) the checkpoint was trained on")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (a copy of --model with the new parts)")
    parser.add_argument("--train-images", type=int, default=40, help="train images per dataset for the familiarity index (default 40)")
    parser.add_argument("--val-images", type=int, default=12, help="validation images per dataset for the thresholds (default 12)")
    parser.add_argument("--keep", type=float, default=0.95,
                        help="share of the correct validation names the naming thresholds keep together (default 0.95)")
    parser.add_argument("--requests", type=int, default=12000, help="generated requests to train the reader on (default 12000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: the training cache)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to be --model itself (its reader and index are replaced)")


def _check(args) -> tuple[Path, Path, Path]:
    model, data, out = Path(args.model), Path(args.data), Path(args.out)
    if not (model / "config.json").is_file():
        raise SystemExit(f"error: {model} is not a MIMO checkpoint (no config.json)")
    if not (data / "samples.jsonl").is_file():
        raise SystemExit(f"error: {data} is not a data-builder folder (no samples.jsonl)")
    if out.resolve() == model.resolve():
        if not args.overwrite:
            raise SystemExit(f"error: --out is the checkpoint itself; give --overwrite to replace its reader and familiarity index")
    elif out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder")
    if not 0 < args.keep <= 1:
        raise SystemExit(f"error: --keep must be in (0, 1], got {args.keep}")
    for name in ("train_images", "val_images", "requests"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    return model, data, out


def run_understand(args, log=print) -> dict:
    import torch

    from ..modeling import load_mimo
    from ..modeling.familiarity import AnswerThresholds, FamiliarityIndex
    from ..evaluation.open_world import Asker, canonical_segment_rows, choose_keep, naming_rows
    from .familiarity_bank import collect_descriptors
    from .features import FeatureCache
    from .reader_training import train_request_reader
    from .samples import load_examples

    model_dir, data, out = _check(args)
    if out.resolve() != model_dir.resolve():
        shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns(*UNDERSTANDING_FILES))
    train = load_examples(data, "train")
    vocabulary = tuple(sorted({t for e in train for t in e.targets}))
    log(f"vocabulary: {len(vocabulary)} target names from the train split")
    reader = train_request_reader(vocabulary, samples=args.requests, seed=args.seed, log=log).reader
    reader.save_pretrained(out)

    model, processor = load_mimo(out)
    cache = FeatureCache(model, processor, args.cache_dir, dtype=torch.float16, enabled=True, memory_items=2)
    bank_examples = [e for e in load_examples(data, "train", max_images_per_dataset=args.train_images, seed=args.seed) if e.mask_files]
    descriptors = collect_descriptors(bank_examples, cache, lambda i, n: log(f"familiarity index: {i}/{n} images") if i % 50 == 0 or i == n else None)
    index = FamiliarityIndex(torch.stack(descriptors.images), descriptors.image_datasets, torch.stack(descriptors.regions),
                             descriptors.region_names, image_names=descriptors.image_names)
    index.save_pretrained(out)
    del model, processor, cache

    asker = Asker.load(out, args.cache_dir)
    val = load_examples(data, "val", max_images_per_dataset=args.val_images, seed=args.seed)
    naming = naming_rows(asker, val, None, "in-domain", log, families=False)
    segments = canonical_segment_rows(asker, val, None, log)
    thresholds = choose_keep(naming, segments, args.keep)
    thresholds.chosen_on.update({"split": "val", "val_images_per_dataset": args.val_images, "data": str(data)})
    index.thresholds = thresholds
    index.save_pretrained(out)
    summary = {"vocabulary": len(vocabulary), "reader": reader.config.training, "index_images": len(descriptors.images),
               "index_regions": len(descriptors.regions), "thresholds": {k: v for k, v in thresholds.__dict__.items()}}
    log(json.dumps(summary["thresholds"]))
    return summary


def main(args) -> int:
    try:
        run_understand(args)
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 2
    return 0
