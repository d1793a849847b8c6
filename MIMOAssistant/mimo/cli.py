"""``mimo-assistant``: ask about an image from the command line, run the demo.

    mimo-assistant ask IMAGE "QUESTION" [--box X0 Y0 X1 Y1]... [--point X Y [--negative]]...
        [--scribble "x,y x,y ..."]... [--lasso "x,y ..."]... [--axis axial|coronal|sagittal --slice K]
        [--backend NAME] [--model PATH] --out OUT [--json]
    mimo-assistant demo [--out-dir DIR]

Coordinates are pixel column x and row y of the 2D image, or of the chosen slice as Slicer
displays it. Errors print one line naming the problem and exit with status 2; nothing is
written when a turn fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import MimoError, OutputError
from .geometry import AXES
from .image import MODALITIES
from .intensity import CT_WINDOWS
from .prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt, parse_vertices

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".png", ".dcm")


class _PromptAction(argparse.Action):
    """Collects prompts in command-line order; ``--negative`` flips the point just before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        prompts = getattr(namespace, "prompts", None) or []
        try:
            if self.dest == "box":
                prompts.append(BoxPrompt(*(float(v) for v in values)))
            elif self.dest == "point":
                prompts.append(PointPrompt(float(values[0]), float(values[1])))
            elif self.dest == "negative":
                if not prompts or not isinstance(prompts[-1], PointPrompt):
                    parser.error("--negative must follow a --point X Y")
                last = prompts.pop()
                prompts.append(PointPrompt(last.x, last.y, positive=False))
            elif self.dest == "scribble":
                prompts.append(ScribblePrompt(parse_vertices(values, "--scribble"), namespace.brush_width))
            elif self.dest == "lasso":
                prompts.append(LassoPrompt(parse_vertices(values, "--lasso")))
        except ValueError:
            parser.error(f"{option_string} takes numbers, got {values}")
        except MimoError as error:
            parser.error(str(error))
        namespace.prompts = prompts


def _add_ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="PNG/JPEG, NIfTI, NRRD, a DICOM file or a DICOM series folder")
    parser.add_argument("question", help='what to ask, e.g. "Segment the polyp in the box."')
    parser.add_argument("--brush-width", type=float, default=3.0, help="scribble brush width in pixels (give it before --scribble)")
    parser.add_argument("--box", nargs=4, metavar=("X0", "Y0", "X1", "Y1"), action=_PromptAction, help="box prompt")
    parser.add_argument("--point", nargs=2, metavar=("X", "Y"), action=_PromptAction, help="positive point prompt")
    parser.add_argument("--negative", nargs=0, action=_PromptAction, help="make the preceding --point negative")
    parser.add_argument("--scribble", metavar='"x,y x,y ..."', action=_PromptAction, help="scribble polyline")
    parser.add_argument("--lasso", metavar='"x,y x,y ..."', action=_PromptAction, help="closed lasso polygon")
    parser.add_argument("--axis", choices=AXES, help="slice orientation for 3D images (default axial)")
    parser.add_argument("--slice", type=int, help="slice index K along that axis (default: the middle slice)")
    parser.add_argument("--modality", choices=MODALITIES, help="override the modality read from or guessed for the file")
    parser.add_argument("--window", choices=sorted(CT_WINDOWS), help="CT window preset (default soft-tissue)")
    parser.add_argument("--backend", default="litemedsam", help="backend name (default: litemedsam)")
    parser.add_argument("--model", help="model checkpoint path (default: the backend's bundled weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", required=True, help="output: .seg.nrrd, .nii.gz, .png (2D input) or .dcm (DICOM SEG, DICOM input)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def check_output_path(out: Path, is_2d: bool, is_dicom: bool, overwrite: bool) -> None:
    """Fail before any work is done when OUT cannot be written."""
    name = out.name.lower()
    suffix = next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise OutputError(f"{out}: unsupported output type; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if suffix == ".png" and not is_2d:
        raise OutputError(f"{out}: a PNG label image needs a 2D input; use .seg.nrrd or .nii.gz for volumes")
    if suffix == ".dcm" and not is_dicom:
        raise OutputError(f"{out}: DICOM SEG needs a DICOM input image")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists; choose another name or pass --overwrite")


def run_ask(args: argparse.Namespace) -> dict:
    from .assistant import ask_volume, default_geometry
    from .backend import create_backend
    from .image import load_image
    from .output import write_segmentation

    timings = {}
    start = time.perf_counter()
    volume = load_image(args.image, args.modality)
    out = Path(args.out)
    check_output_path(out, volume.is_2d, volume.is_dicom, args.overwrite)
    if args.slice is not None and volume.is_2d and args.slice != 0:
        raise MimoError(f"{args.image} is a 2D image: the only slice is 0")
    geometry = default_geometry(volume, args.axis, args.slice)
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    backend = create_backend(args.backend, args.model, args.device)
    timings["model_load_s"] = time.perf_counter() - start
    result = ask_volume(backend, volume, args.question, list(getattr(args, "prompts", None) or []), geometry, window=args.window)
    timings["encode_s"] = backend.last_encode_seconds
    timings.update(result.answer.timings)
    written = None
    if result.segments:
        start = time.perf_counter()
        written = write_segmentation(out, volume, result.segments, overwrite=args.overwrite)
        timings["write_s"] = time.perf_counter() - start
    return {
        "answer": result.answer.text,
        "spans": [span.to_dict() for span in result.answer.spans],
        "segments": [segment.to_dict() for segment in result.segments],
        "slice": {"axis": geometry.axis, "index": geometry.index, "size": list(geometry.shape)},
        "backend": backend.info().to_dict(),
        "output": str(written) if written else None,
        "timings": {key: round(value, 4) for key, value in timings.items()},
    }


def _print_human(report: dict) -> None:
    print(report["answer"])
    for segment in report["segments"]:
        codes = segment["terminology"]
        kind = "custom (no standard code)" if codes.get("custom") else f"SNOMED CT {codes['type']['value']} {codes['type']['meaning']}"
        print(f"  [{segment['label']}] {segment['name']}: {segment['pixel_count']} voxels, {kind}")
    print(f"wrote {report['output']}" if report["output"] else "nothing was segmented; no file written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mimo-assistant", description="Ask a medical image assistant about an image.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_ask_arguments(commands.add_parser("ask", help="ask one question about an image, write the segments"))
    demo = commands.add_parser("demo", help="run the assistant on an embedded sample image")
    demo.add_argument("--out-dir", default="mimo-demo", help="folder for the outputs (default ./mimo-demo)")
    demo.add_argument("--backend", default="litemedsam")
    demo.add_argument("--model")
    demo.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.command == "ask":
            report = run_ask(args)
            print(json.dumps(report, indent=2)) if args.json else _print_human(report)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(Path(args.out_dir), args.backend, args.model, args.device)
    except MimoError as error:
        print(f"mimo-assistant: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
