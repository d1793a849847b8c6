"""Generated data and a tiny random model, for tests and smoke runs without the shared data.

:func:`write_synthetic_folder` writes a data-builder folder (``samples.jsonl``,
``datasheet.json``, PNG images and masks) of small noisy images, each with one bright shape
whose kind depends on the "dataset": a disk ("cyst", ultrasound), a square ("polyp",
endoscopy) and an ellipse on the left of a CT-like slice ("left kidney": a lateral target,
never mirrored). :func:`write_synthetic_manifest` writes the same images as an open2d-format
manifest. :func:`write_tiny_checkpoint` saves a MIMO model with a small random SAM as its
grounding part (64 px input), which trains and answers in milliseconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..prompts import prompt_to_dict
from .samples import box_around

DATASETS = (
    ("synth_us", "ultrasound", "cyst", "disk"),
    ("synth_endo", "endoscopy", "polyp", "square"),
    ("synth_ct", "CT", "left kidney", "ellipse"),
)


def _image(kind: str, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:rows, :cols]
    cy, cx = rng.uniform(0.35, 0.65) * rows, rng.uniform(0.35, 0.65) * cols
    radius = rng.uniform(0.15, 0.25) * rows
    if kind == "disk":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    elif kind == "square":
        mask = (abs(yy - cy) < radius) & (abs(xx - cx) < radius)
    else:
        cx = rng.uniform(0.2, 0.35) * cols
        mask = ((yy - cy) / (1.4 * radius)) ** 2 + ((xx - cx) / (0.8 * radius)) ** 2 < 1
    pixels = rng.integers(0, 70, (rows, cols, 3)).astype(np.uint8)
    pixels[mask] = rng.integers(180, 240, 3).astype(np.uint8)
    return pixels, mask


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_synthetic_images(folder: str | Path, images_per_dataset: int = 3, seed: int = 0, shape=(48, 64)) -> list[dict]:
    """PNG images and masks; returns open2d-style records (paths relative to ``folder``)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    records = []
    for dataset, modality, target, kind in DATASETS:
        for index in range(images_per_dataset):
            pixels, mask = _image(kind, shape[0], shape[1], rng)
            image, mask_file = f"{dataset}/images/{index}.png", f"{dataset}/masks/{index}.png"
            _save_png(pixels, folder / image)
            _save_png((mask * 255).astype(np.uint8), folder / mask_file)
            records.append({
                "id": f"{dataset}/{index}", "dataset": dataset, "modality": modality, "image": image,
                "width": shape[1], "height": shape[0], "findings": {},
                "masks": [{"target": target, "file": mask_file, "fg_frac": float(mask.mean())}],
                "source": "generated", "license": "CC0 (generated)",
            })
    return records


def write_synthetic_manifest(folder: str | Path, images_per_dataset: int = 3, seed: int = 0) -> Path:
    """An open2d-format ``manifest.jsonl`` over generated images (splits: :func:`.samples.manifest_split`)."""
    folder = Path(folder)
    records = write_synthetic_images(folder, images_per_dataset, seed)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_synthetic_folder(folder: str | Path, images_per_dataset: int = 3, seed: int = 0) -> Path:
    """A data-builder folder (the format of ``mimo-assistant data build``): per image a text_seg, a
    prompt_perception, a negative and a closed VQA sample.

    Images ``0 .. n-3`` are split ``train``, ``n-2`` ``val`` and ``n-1`` ``test`` (n >= 3).
    """
    from .samples import read_mask

    folder = Path(folder)
    records = write_synthetic_images(folder, images_per_dataset, seed)
    targets = [t for _, _, t, _ in DATASETS]
    lines = []
    for record in records:
        index = int(record["id"].rsplit("/", 1)[1])
        split = "test" if index == images_per_dataset - 1 else "val" if index == images_per_dataset - 2 else "train"
        target, mask_file = record["masks"][0]["target"], record["masks"][0]["file"]
        box = prompt_to_dict(box_around(read_mask(folder / mask_file)))
        absent = next(t for t in targets if t != target)
        common = {"image": record["image"], "root": "out", "spacing_mm": [1.0, 1.0], "calibrated": False, "modality": record["modality"],
                  "dataset": record["dataset"], "group": record["id"], "split": split}
        samples = [
            {"perspective": "text_seg", "prompts": [], "masks": [mask_file], "targets": [target],
             "conversation": [{"role": "user", "text": f"Segment the {target}."}, {"role": "assistant", "text": f"<p>{target}</p><SEG>"}]},
            {"perspective": "prompt_perception", "prompts": [box], "masks": [mask_file], "targets": [target],
             "conversation": [{"role": "user", "text": "What is this?"}, {"role": "assistant", "text": f"This is the <p>{target}</p><SEG>."}]},
            {"perspective": "negative", "prompts": [], "masks": [], "targets": [], "absent": [absent],
             "answer_type": "closed", "closed_answer": "no",
             "conversation": [{"role": "user", "text": f"Segment the {absent}."}, {"role": "assistant", "text": f"There is no {absent} in this image."}]},
            {"perspective": "vqa", "prompts": [], "masks": [], "targets": [target], "answer_type": "closed", "closed_answer": "yes",
             "conversation": [{"role": "user", "text": f"Is there a {target} in this image?"}, {"role": "assistant", "text": "Yes."}]},
        ]
        for number, sample in enumerate(samples):
            sample.setdefault("answer_type", "open")
            sample.setdefault("closed_answer", None)
            lines.append({"id": f"{record['id']}/{sample['perspective']}/{number}", **common, **sample})
    (folder / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "datasheet.json").write_text(json.dumps({"name": "synthetic", "roots": {"out": "."}, "licence": "CC0 (generated)"}, indent=1))
    return folder


def tiny_sam_config() -> dict:
    """A SAM of the real architecture: 64 px input, 8 x 8 embedding of 32 channels, 32 px masks."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=64,
        patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
    )
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()).to_dict()


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, tokenizer=None) -> Path:
    """A random MIMO model with a tiny SAM grounding part and mimo-tiny's language model."""
    from ..modeling import create_mimo_tiny, save_mimo
    from ..modeling.configuration import GroundingConfig

    model, processor = create_mimo_tiny(GroundingConfig(kind="sam", weights=None, sam_config=tiny_sam_config()), tokenizer, seed)
    save_mimo(model, processor, directory)
    return Path(directory)
