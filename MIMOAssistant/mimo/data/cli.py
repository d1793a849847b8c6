"""``mimo-assistant data build``: command-line arguments and the entry point.

    mimo-assistant data build --manifest PATH [--manifest PATH]... [--volumes DIR]... --out DIR
        [--seed N] [--val-fraction F] [--test-fraction F] [--max-per-dataset N]
        [--slices-per-structure N] [--workers N] [--overwrite]

``mimo/cli.py`` wires it as a sub-command (``add_data_arguments`` on the "build" parser,
``run_data_build`` to run it). Until then: ``python -m mimo.data.cli build ...``.

Errors print one line and return status 2: a missing manifest or volumes folder, an output
folder that exists and is not empty (without --overwrite, which only replaces a previous
build). Records whose image or mask file is missing are skipped and counted in the datasheet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MimoError


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``data build`` on ``parser``."""
    parser.add_argument("--manifest", action="append", default=[], type=Path, metavar="PATH",
                        help="open2d-style manifest.jsonl (repeatable); paths inside are relative to its folder")
    parser.add_argument("--volumes", action="append", default=[], type=Path, metavar="DIR",
                        help="folder of labelled volumes (a volumes.json dataset, a known shared-data folder, or their parent; repeatable)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same samples.jsonl")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of each dataset's images for validation (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="fraction of each dataset's images for test (default 0.1)")
    parser.add_argument("--max-per-dataset", type=int, default=None, metavar="N",
                        help="at most N images per 2D dataset and N slices per volume dataset (for quick builds)")
    parser.add_argument("--slices-per-structure", type=int, default=2, metavar="N",
                        help="slices sampled per volume structure and plane (default 2)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="processes for the 2D records (default: up to 4); the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it holds a previous data build")
    return parser


def run_data_build(args: argparse.Namespace) -> int:
    """Run a build from parsed arguments; 0 on success, 2 on an input or output error."""
    from .builder import BuildOptions, build

    options = BuildOptions(
        manifests=list(args.manifest), volumes=list(args.volumes), out=args.out, seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, max_per_dataset=args.max_per_dataset,
        slices_per_structure=args.slices_per_structure, overwrite=args.overwrite, workers=max(1, args.workers),
    )
    try:
        sheet = build(options)
    except MimoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = sheet["counts"]
    print(f"wrote {sheet['samples']} samples to {args.out} in {sheet['build']['elapsed_s']} s")
    print("  perspectives: " + ", ".join(f"{k} {v}" for k, v in counts["perspective"].items()))
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in counts["split"].items()))
    skipped = {k: v for source in sheet["sources"].values() for k, v in source.items() if k.startswith("skipped") and v}
    if skipped:
        print("  skipped records: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + " (see datasheet.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimo.data.cli", description="Build MIMO instruction data from segmentation data.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_arguments(sub.add_parser("build", help="build samples.jsonl and datasheet from manifests and volumes"))
    args = parser.parse_args(argv)
    return run_data_build(args)


if __name__ == "__main__":
    sys.exit(main())
