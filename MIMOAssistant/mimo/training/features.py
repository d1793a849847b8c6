"""A disk cache of the frozen image encoders' output, one safetensors file per image.

Encoding an image (LiteMedSAM's TinyViT: about 1.3 s on a 2-core CPU) costs far more than a
training step of everything after it, and the encoders are frozen: so each image is encoded
once, in a resumable pass (:meth:`FeatureCache.encode_missing`), and training reads the
features back (a few milliseconds).

The key of an entry is a SHA-256 of: the image file's absolute path, its byte size and pixel
size, the pixel spacing, the mirroring applied (augmentation) and the model's *encoder hash*
(:func:`encoder_hash`: the grounding and understanding configurations, the referenced weights'
SHA-256, the processor's canvas settings, and the encoder weights themselves when they come
from the checkpoint rather than a referenced file). Any change there is a different entry, so
a stale feature is never read. Files are written to a temporary name and renamed, so an
interrupted pass leaves no half-written entry; rerunning it encodes only what is missing.

Entries live outside the repository and the data: ``$MIMO_FEATURE_CACHE`` or
``~/.cache/mimo/features`` by default, in a sub-folder per encoder hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backend import SliceImage
from .samples import image_size, read_rgb

FLIPS = ("", "h", "v")
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImageRef:
    """An image as the encoder sees it: file, pixel spacing, mirroring."""

    path: str
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    flip: str = ""
    modality: str = "OT"

    def load(self) -> SliceImage:
        return SliceImage(flip_array(read_rgb(self.path), self.flip), self.spacing_mm, self.modality or "OT")


@dataclass
class CachedFeatures:
    geometry: object  # mimo.modeling.ImageGeometry
    features: object  # mimo.modeling.ImageFeatures (batch of one, on the CPU)


def flip_array(array: np.ndarray, flip: str) -> np.ndarray:
    if "h" in flip:
        array = array[:, ::-1]
    if "v" in flip:
        array = array[::-1]
    return np.ascontiguousarray(array)


def _tensor_digest(module: torch.nn.Module | None, digest) -> None:
    if module is None:
        return
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())


def encoder_hash(model, processor) -> str:
    """What the cached features depend on, as a hex SHA-256."""
    config = model.config
    grounding = {k: v for k, v in config.grounding.__dict__.items() if k not in ("train_prompt_encoder", "train_mask_decoder")}
    understanding = dict(config.understanding.__dict__)
    settings = processor.settings
    description = {
        "format": CACHE_FORMAT,
        "grounding": grounding,
        "understanding": understanding,
        "processor": [settings.grounding_size, settings.grounding_normalization, settings.vision_size,
                      list(settings.vision_mean), list(settings.vision_std)],
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    if config.grounding.weights is None or config.grounding.train_image_encoder:
        _tensor_digest(model.grounding.image_encoder, digest)
    if model.understanding.vision_model is not None and (config.understanding.weights is None or config.understanding.train):
        _tensor_digest(model.understanding.vision_model, digest)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("MIMO_FEATURE_CACHE", "~/.cache/mimo/features")))


class FeatureCache:
    """Encoded images on disk, keyed as the module docstring says.

    With ``enabled=False`` nothing goes to disk: :meth:`get` encodes (and keeps the last
    ``memory_items`` images in memory).
    ``encoded`` and ``hits`` count what happened, for reports and tests.
    """

    def __init__(self, model, processor, directory: str | Path | None = None, dtype: torch.dtype = torch.float16,
                 enabled: bool = True, memory_items: int = 16) -> None:
        self.model = model
        self.processor = processor
        self.dtype = dtype
        self.enabled = enabled
        self.model_hash = encoder_hash(model, processor)
        self.directory = (Path(directory) if directory else default_cache_dir()) / self.model_hash[:16]
        self.encoded = 0
        self.hits = 0
        self.encode_seconds = 0.0
        self._memory: OrderedDict[str, CachedFeatures] = OrderedDict()
        self._memory_items = memory_items

    # ----- keys -------------------------------------------------------------------------------

    def key(self, ref: ImageRef) -> str:
        path = Path(ref.path).resolve()
        rows, cols = image_size(path)
        description = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "size": [rows, cols],
            "spacing_mm": [round(float(v), 6) for v in ref.spacing_mm],
            "flip": ref.flip,
            "encoder": self.model_hash,
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()

    def file(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def contains(self, ref: ImageRef) -> bool:
        return self.enabled and self.file(self.key(ref)).is_file()

    # ----- reading and writing ----------------------------------------------------------------

    def _encode(self, ref: ImageRef) -> CachedFeatures:
        return self._encode_batch([ref])[0]

    def _encode_batch(self, refs: Sequence[ImageRef]) -> list[CachedFeatures]:
        """Encode several images in one forward pass (measured on a 2-core CPU: LiteMedSAM takes
        about 1.7 s per image four at a time, about 2 s one by one)."""
        from ..modeling import ImageFeatures

        start = time.perf_counter()
        inputs = [self.processor.preprocess_image(ref.load()) for ref in refs]
        vision = None if inputs[0].vision_pixel_values is None else torch.cat([i.vision_pixel_values for i in inputs])
        with torch.inference_mode():
            features = self.model.encode_images(torch.cat([i.grounding_pixel_values for i in inputs]), vision)
        self.encoded += len(refs)
        self.encode_seconds += time.perf_counter() - start
        same = features.understanding is features.grounding
        entries = []
        for index, item in enumerate(inputs):
            grounding = features.grounding[index:index + 1].detach().to("cpu", self.dtype).clone()
            understanding = grounding if same else features.understanding[index:index + 1].detach().to("cpu", self.dtype).clone()
            entries.append(CachedFeatures(item.geometry, ImageFeatures(grounding, understanding)))
        return entries

    def _write(self, key: str, entry: CachedFeatures, ref: ImageRef) -> None:
        from safetensors.torch import save_file

        path = self.file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        features = entry.features
        tensors = {"grounding": features.grounding.contiguous()}
        if features.understanding is not features.grounding:
            tensors["understanding"] = features.understanding.contiguous()
        geometry = entry.geometry
        metadata = {
            "format": str(CACHE_FORMAT),
            "original_size": json.dumps(list(geometry.original_size)),
            "resized_size": json.dumps(list(geometry.resized_size)),
            "canvas_size": str(geometry.canvas_size),
            "image": ref.path,
            "flip": ref.flip,
            "encoder": self.model_hash,
        }
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)

    def _read(self, key: str) -> CachedFeatures | None:
        from safetensors import safe_open

        from ..modeling import ImageFeatures, ImageGeometry

        path = self.file(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata()
                grounding = handle.get_tensor("grounding")
                understanding = handle.get_tensor("understanding") if "understanding" in set(handle.keys()) else grounding
        except (OSError, RuntimeError, ValueError, KeyError):  # a damaged entry is re-encoded
            return None
        geometry = ImageGeometry(
            tuple(json.loads(metadata["original_size"])), tuple(json.loads(metadata["resized_size"])), int(metadata["canvas_size"])
        )
        return CachedFeatures(geometry, ImageFeatures(grounding, understanding))

    def get(self, ref: ImageRef) -> CachedFeatures:
        """Features of one image: from memory, from disk, or encoded now (and stored when enabled)."""
        key = self.key(ref)
        entry = self._memory.get(key)
        if entry is not None:
            self.hits += 1
            self._memory.move_to_end(key)
            return entry
        entry = self._read(key) if self.enabled else None
        if entry is None:
            entry = self._encode(ref)
            if self.enabled:
                self._write(key, entry, ref)
        else:
            self.hits += 1
        self._memory[key] = entry
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        return entry

    def encode_missing(
        self,
        refs: Iterable[ImageRef],
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
        log: Callable[[str], None] | None = None,
        batch_size: int = 4,
    ) -> dict:
        """Encode every image not yet cached (this process's share of them), ``batch_size`` at a
        time; resumable.

        Returns counts and the mean encode time per image.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        refs = sorted(set(refs), key=lambda r: (r.path, r.flip, r.spacing_mm))
        if not self.enabled:
            return {"images": len(refs), "encoded": 0, "cached": 0, "seconds_per_image": None}
        mine = refs[rank::world_size]
        keyed = [(self.key(ref), ref) for ref in mine]  # a key reads the image's header: once each
        missing = [(key, ref) for key, ref in keyed if not self.file(key).is_file()]
        before_count, before_seconds = self.encoded, self.encode_seconds
        bar = None
        if progress and missing:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(missing), desc="encoding images", unit="image", dynamic_ncols=True)
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            todo = [(key, ref) for key, ref in batch if not self.file(key).is_file()]  # another process may have done some
            if todo:
                for (key, ref), entry in zip(todo, self._encode_batch([ref for _, ref in todo])):
                    self._write(key, entry, ref)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        count = self.encoded - before_count
        stats = {
            "images": len(refs),
            "encoded": count,
            "cached": len(mine) - count,
            "seconds_per_image": (self.encode_seconds - before_seconds) / count if count else None,
            "directory": str(self.directory),
        }
        if log is not None:
            log(f"feature cache {self.directory}: {stats['cached']} cached, {count} encoded now")
        return stats


def stack_features(entries: Sequence[CachedFeatures], device: torch.device | str, dtype: torch.dtype,
                   refine_pixels: torch.Tensor | None = None):
    """One batch of cached features in the model's precision on its device, with the mask
    refiner's pixel canvases (not cached: cheap to make) when the model has a refiner."""
    from ..modeling import ImageFeatures

    grounding = torch.cat([e.features.grounding for e in entries]).to(device=device, dtype=dtype)
    if all(e.features.understanding is e.features.grounding for e in entries):
        understanding = grounding
    else:
        understanding = torch.cat([e.features.understanding for e in entries]).to(device=device, dtype=dtype)
    pixels = None if refine_pixels is None else refine_pixels.to(device=device, dtype=dtype)
    return ImageFeatures(grounding, understanding, pixels)
