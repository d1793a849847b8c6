"""The main job on an embedded default: a real CT slice that pydicom ships, a box, a question.

No ../shared data and no download: pydicom's own test file ``CT_small.dcm`` (a 128 x 128
axial CT slice through a vertebra) is installed with pydicom.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MimoError

DEMO_QUESTION = "Segment the vertebra in the box."
#: Around the vertebral body and posterior elements of CT_small.dcm, in pixels (x0, y0, x1, y1).
DEMO_BOX = (30.0, 6.0, 84.0, 84.0)


def demo_image_path() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if not path:
        raise MimoError("pydicom's test file CT_small.dcm is missing from this installation")
    return Path(path)


def run_demo(out_dir: Path, backend_name: str | None = None, model: str | None = None, device: str = "auto") -> dict:
    from .assistant import ask_volume, default_geometry
    from .backend import create_backend
    from .image import load_image
    from .output import write_overlay_png, write_segmentation
    from .prompts import BoxPrompt

    volume = load_image(demo_image_path())
    geometry = default_geometry(volume)
    backend = create_backend(backend_name, model, device)
    result = ask_volume(backend, volume, DEMO_QUESTION, [BoxPrompt(*DEMO_BOX)], geometry)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "segmentation": write_segmentation(out_dir / "demo.seg.nrrd", volume, result.segments, overwrite=True),
        "dicom_seg": write_segmentation(out_dir / "demo-seg.dcm", volume, result.segments, overwrite=True),
        "overlay": write_overlay_png(
            out_dir / "demo-overlay.png",
            result.image.pixels,
            result.answer.masks,
            [segment.color for segment in result.segments],
        ),
    }
    print(f"Image: {demo_image_path().name} (CT, {volume.shape[2]}x{volume.shape[1]}), box {DEMO_BOX}")
    print(f"Q: {DEMO_QUESTION}")
    print(f"A: {result.answer.text}")
    for segment in result.segments:
        print(f"  segment {segment.name!r}: {segment.voxel_count} voxels, terminology {segment.entry.to_slicer_string()}")
    for kind, path in outputs.items():
        print(f"wrote {kind}: {path}")
    print("Research and education use only; not for clinical decisions.")
    return {"result": result, "outputs": outputs}
