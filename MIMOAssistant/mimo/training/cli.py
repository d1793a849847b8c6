"""``mimo-assistant train CONFIG``: the command-line side of :mod:`mimo.training.trainer`.

Wired into ``mimo.cli`` with :func:`add_train_arguments` and :func:`run_train`; also runnable on
its own, which is how several processes are launched::

    accelerate launch --config_file mimo/training/configs/multi_gpu.yaml -m mimo.training.cli CONFIG

Exit status: 0 done (or stopped by ``debug.stop_after_steps``), 2 bad configuration or data,
3 training diverged (NaN/inf; the message names the step and the loss term).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training configuration (.json, .yaml or .yml); see mimo/training/configs/mimo-tiny-cpu.json")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--data", help="override data (a data-builder folder or an open2d manifest.jsonl)")
    parser.add_argument("--steps", type=int, help="override steps")
    parser.add_argument("--resume", help="auto (default: latest checkpoint in the output dir), none, or a checkpoint folder")
    parser.add_argument("--cache-dir", help="override features.cache_dir")
    parser.add_argument("--max-images-per-dataset", type=int, help="override sampling.max_images_per_dataset")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set optimizer.lr=1e-4 --set augment.hflip=0.5 (VALUE is JSON or a string)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs still go to training_log.jsonl)")


def overrides_from(args: argparse.Namespace) -> dict:
    from .config import ConfigError

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _value(value.strip())
    for option, key in (("output_dir", "output_dir"), ("data", "data"), ("steps", "steps"), ("cache_dir", "features.cache_dir"),
                        ("max_images_per_dataset", "sampling.max_images_per_dataset")):
        value = getattr(args, option, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "steps", None) is not None:
        overrides["epochs"] = None
    if getattr(args, "resume", None) is not None:
        overrides["resume"] = False if args.resume.lower() in ("none", "no", "false") else args.resume
    if getattr(args, "cpu", False):
        overrides["cpu"] = True
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from ..errors import MimoError
    from .config import load_config
    from .trainer import TrainingDiverged, train

    try:
        config = load_config(args.config, overrides_from(args))
        result = train(config, progress=not getattr(args, "no_progress", False))
    except TrainingDiverged as error:
        print(f"mimo-assistant: error: {error}", file=sys.stderr)
        return 3
    except MimoError as error:
        print(f"mimo-assistant: error: {error}", file=sys.stderr)
        return 2
    if result.interrupted and os.environ.get("RANK", "0") == "0":
        print(f"stopped after step {result.steps_done} (debug.stop_after_steps); resume with the same command")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mimo-assistant train", description="Train a MIMO model from a configuration file.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
