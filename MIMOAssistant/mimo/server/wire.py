"""What travels between client and server: compact, typed, bounded encodings.

Both ends import this module, so it depends on numpy and the standard library only.

Slice image (client -> server, once per session)::

    {"dtype": "uint8", "shape": [rows, cols, channels], "encoding": "zlib" | "raw",
     "filter": "sub" | "none", "data": "<base64>"}

``channels`` is 3, or 1 when the three colour channels are equal (CT, MR, X-ray: the server
repeats the one channel). ``filter: "sub"`` stores each pixel minus its left neighbour
(modulo 256, per channel, as PNG's Sub filter), which deflate compresses better; ``zlib`` is
RFC 1950 deflate of the filtered bytes in C order. A 512 x 512 CT slice (768 KiB as RGB)
travels as about 100 KiB.

Mask (server -> client, per answer mask)::

    {"shape": [rows, cols], "bbox": [row0, col0, height, width],
     "encoding": "packbits+zlib", "data": "<base64>"}

Only the bounding box of the mask travels, one bit per pixel (``np.packbits`` of the box in
C order, big-endian bit order), deflated. An empty mask has ``bbox [0, 0, 0, 0]`` and no data.

Decoders never trust sizes: the declared shape bounds how much is inflated (no zip bombs),
and every mismatch raises :class:`WireError` with the reason.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from typing import Any

import numpy as np

from ..errors import MimoError

API_VERSION = "1.0"
"""``major.minor``: a client talks to servers of the same major version."""

IMAGE_ENCODINGS = ("zlib", "raw")
IMAGE_FILTERS = ("sub", "none")
MASK_ENCODING = "packbits+zlib"
ZLIB_LEVEL = 6  # 3-4 ms for a 512 x 512 slice; level 9 saves 1 % for 4x the time


class WireError(MimoError):
    """A payload does not decode to what it declares."""


class PayloadTooLarge(WireError):
    """A payload declares more pixels than the receiver accepts."""


def api_major(version: str) -> str:
    return str(version).split(".", 1)[0]


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise WireError(f"{what}: data must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise WireError(f"{what}: data is not valid base64 ({error})") from None


def _inflate(data: bytes, expected: int, what: str) -> bytes:
    """Inflate at most ``expected`` bytes; anything else is an error (no zip bombs)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, expected + 1)
    except zlib.error as error:
        raise WireError(f"{what}: data is not a zlib stream ({error})") from None
    if len(out) > expected or inflater.unconsumed_tail:
        raise WireError(f"{what}: data inflates to more than the {expected} bytes its shape declares")
    if not inflater.eof:
        raise WireError(f"{what}: the zlib stream is truncated")
    if inflater.unused_data:
        raise WireError(f"{what}: unexpected bytes after the zlib stream")
    if len(out) != expected:
        raise WireError(f"{what}: data holds {len(out)} bytes, its shape declares {expected}")
    return out


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WireError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise WireError(f"{what} must be in {low}..{high}, got {value}")
    return value


# --- slice images --------------------------------------------------------------------------


def encode_image(pixels: np.ndarray, encoding: str = "zlib", image_filter: str = "sub", level: int = ZLIB_LEVEL) -> dict:
    """uint8 ``(rows, cols, 3)`` pixels -> the image payload."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise WireError(f"image must be uint8 (rows, cols, 3), got {pixels.dtype} {pixels.shape}")
    if encoding not in IMAGE_ENCODINGS or image_filter not in IMAGE_FILTERS:
        raise WireError(f"unknown encoding {encoding!r} or filter {image_filter!r}")
    if pixels.shape[2] == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        pixels = pixels[..., :1]
    if image_filter == "sub":
        pixels = np.diff(pixels, axis=1, prepend=np.zeros((pixels.shape[0], 1, pixels.shape[2]), np.uint8))
    raw = np.ascontiguousarray(pixels).tobytes()
    data = zlib.compress(raw, level) if encoding == "zlib" else raw
    return {"dtype": "uint8", "shape": [int(v) for v in pixels.shape], "encoding": encoding, "filter": image_filter, "data": _b64encode(data)}


def check_image_shape(shape: Any, max_pixels: int) -> tuple[int, int, int]:
    """A declared ``[rows, cols, channels]``; :class:`PayloadTooLarge` past ``max_pixels``."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise WireError(f"image shape must be [rows, cols, channels], got {shape!r}")
    rows = _check_int(shape[0], "image rows", 2, 1 << 20)
    cols = _check_int(shape[1], "image columns", 2, 1 << 20)
    channels = _check_int(shape[2], "image channels", 1, 3)
    if channels == 2:
        raise WireError("image channels must be 1 (grey) or 3 (RGB), got 2")
    if rows * cols > max_pixels:
        raise PayloadTooLarge(f"image of {rows} x {cols} pixels is larger than this server accepts ({max_pixels} pixels)")
    return rows, cols, channels


def decode_image(payload: dict, max_pixels: int = 1 << 26) -> np.ndarray:
    """The image payload -> uint8 ``(rows, cols, 3)`` pixels."""
    if payload.get("dtype") != "uint8":
        raise WireError(f"image dtype must be 'uint8', got {payload.get('dtype')!r}")
    rows, cols, channels = check_image_shape(payload.get("shape"), max_pixels)
    encoding = payload.get("encoding", "zlib")
    image_filter = payload.get("filter", "none")
    if encoding not in IMAGE_ENCODINGS:
        raise WireError(f"unknown image encoding {encoding!r}; expected one of {', '.join(IMAGE_ENCODINGS)}")
    if image_filter not in IMAGE_FILTERS:
        raise WireError(f"unknown image filter {image_filter!r}; expected one of {', '.join(IMAGE_FILTERS)}")
    expected = rows * cols * channels
    data = _b64decode(payload.get("data"), "image")
    if encoding == "zlib":
        data = _inflate(data, expected, "image")
    elif len(data) != expected:
        raise WireError(f"image: data holds {len(data)} bytes, its shape declares {expected}")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(rows, cols, channels)
    if image_filter == "sub":
        pixels = np.cumsum(pixels, axis=1, dtype=np.uint8)
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


# --- masks ---------------------------------------------------------------------------------


def encode_mask(mask: np.ndarray, level: int = ZLIB_LEVEL) -> dict:
    """bool ``(rows, cols)`` -> its bounding box, bit-packed and deflated."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise WireError(f"a mask must be 2D, got shape {mask.shape}")
    shape = [int(mask.shape[0]), int(mask.shape[1])]
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return {"shape": shape, "bbox": [0, 0, 0, 0], "encoding": MASK_ENCODING, "data": ""}
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    bits = np.packbits(mask[r0 : r1 + 1, c0 : c1 + 1], axis=None)
    return {
        "shape": shape,
        "bbox": [r0, c0, r1 - r0 + 1, c1 - c0 + 1],
        "encoding": MASK_ENCODING,
        "data": _b64encode(zlib.compress(bits.tobytes(), level)),
    }


def decode_mask(payload: dict, max_pixels: int = 1 << 26) -> np.ndarray:
    """The mask payload -> a full-size bool ``(rows, cols)`` mask."""
    if not isinstance(payload, dict) or payload.get("encoding") != MASK_ENCODING:
        raise WireError(f"mask encoding must be {MASK_ENCODING!r}")
    shape, bbox = payload.get("shape"), payload.get("bbox")
    if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise WireError("mask needs shape [rows, cols] and bbox [row0, col0, height, width]")
    rows = _check_int(shape[0], "mask rows", 1, 1 << 20)
    cols = _check_int(shape[1], "mask columns", 1, 1 << 20)
    if rows * cols > max_pixels:
        raise PayloadTooLarge(f"mask of {rows} x {cols} pixels is larger than accepted ({max_pixels} pixels)")
    r0 = _check_int(bbox[0], "mask bbox row", 0, rows)
    c0 = _check_int(bbox[1], "mask bbox column", 0, cols)
    height = _check_int(bbox[2], "mask bbox height", 0, rows - r0)
    width = _check_int(bbox[3], "mask bbox width", 0, cols - c0)
    mask = np.zeros((rows, cols), dtype=bool)
    if height == 0 or width == 0:
        if payload.get("data"):
            raise WireError("an empty mask carries no data")
        return mask
    count = height * width
    packed = _inflate(_b64decode(payload.get("data"), "mask"), math.ceil(count / 8), "mask")
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count)
    mask[r0 : r0 + height, c0 : c0 + width] = bits.reshape(height, width).astype(bool)
    return mask


# --- answers -------------------------------------------------------------------------------


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON (numpy scalars unwrapped, non-finite floats and the rest dropped)."""
    if depth > 8:
        return None
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return None


def answer_to_wire(answer, turn_id: str) -> dict:
    """An engine :class:`~mimo.backend.Answer` -> the JSON answer object."""
    return {
        "turn_id": turn_id,
        "text": answer.text,
        "spans": [span.to_dict() for span in answer.spans],
        "masks": [encode_mask(mask) for mask in answer.masks],
        "timings": {str(k): float(v) for k, v in answer.timings.items() if isinstance(v, (int, float, np.number)) and math.isfinite(float(v))},
        "extra": json_safe(dict(answer.extra)),
    }


def answer_from_wire(data: dict, max_pixels: int = 1 << 26):
    """The JSON answer object -> an engine :class:`~mimo.backend.Answer` with full-size masks."""
    from ..backend import Answer, GroundedSpan

    try:
        spans = [GroundedSpan(str(s["term"]), int(s["start"]), int(s["end"]), int(s["mask_index"])) for s in data.get("spans", [])]
        masks = [decode_mask(m, max_pixels) for m in data.get("masks", [])]
        timings = {str(k): float(v) for k, v in (data.get("timings") or {}).items()}
        return Answer(str(data["text"]), spans, masks, timings, dict(data.get("extra") or {}))
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise WireError(f"malformed answer from the server: {error}") from None


# --- volumes and 3D answers (atlas grounding) -----------------------------------------------

VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "float32")


def encode_volume(array: np.ndarray, level: int = 1) -> dict:
    """A ``[k, j, i]`` voxel array, deflated (level 1: CT/MR voxels barely compress further)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3 or array.dtype.name not in VOLUME_DTYPES:
        raise WireError(f"a volume must be a 3D array of {', '.join(VOLUME_DTYPES)}, got {array.dtype} {array.shape}")
    return {"dtype": array.dtype.name, "shape": [int(n) for n in array.shape], "encoding": "zlib",
            "data": _b64encode(zlib.compress(array.astype(array.dtype.newbyteorder("<")).tobytes(), level))}


def decode_volume(payload: dict, max_voxels: int) -> np.ndarray:
    if not isinstance(payload, dict) or payload.get("encoding") != "zlib":
        raise WireError("volume encoding must be 'zlib'")
    dtype, shape = payload.get("dtype"), payload.get("shape")
    if dtype not in VOLUME_DTYPES:
        raise WireError(f"volume dtype must be one of {', '.join(VOLUME_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise WireError("volume shape must be [slices, rows, columns]")
    dims = [_check_int(n, "volume dimension", 1, 1 << 16) for n in shape]
    if math.prod(dims) > max_voxels:
        raise PayloadTooLarge(f"a volume of {' x '.join(map(str, dims))} voxels is larger than accepted ({max_voxels} voxels)")
    item = np.dtype(dtype).newbyteorder("<")
    data = _inflate(_b64decode(payload.get("data"), "volume"), math.prod(dims) * item.itemsize, "volume")
    return np.frombuffer(data, dtype=item).astype(np.dtype(dtype)).reshape(dims)


def encode_volume_mask(mask: np.ndarray) -> dict:
    """A bool ``[k, j, i]`` mask as a 2D mask payload of its ``(k * j, i)`` view."""
    k, j, i = mask.shape
    return {"shape3d": [int(k), int(j), int(i)], "mask": encode_mask(np.asarray(mask, bool).reshape(k * j, i))}


def decode_volume_mask(payload: dict, max_voxels: int) -> np.ndarray:
    shape = payload.get("shape3d") if isinstance(payload, dict) else None
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise WireError("a 3D mask needs shape3d [slices, rows, columns]")
    k, j, i = (_check_int(n, "mask dimension", 1, 1 << 16) for n in shape)
    mask = decode_mask(payload.get("mask"), max_voxels)
    if mask.shape != (k * j, i):
        raise WireError(f"the 3D mask's data has shape {mask.shape}, its shape3d declares {(k, j, i)}")
    return mask.reshape(k, j, i)


def anatomy_to_wire(answer, turn_id: str) -> dict:
    """An :class:`~mimo.anatomy.AnatomyAnswer` -> JSON."""
    return {
        "turn_id": turn_id,
        "text": answer.text,
        "atlas": answer.atlas,
        "similarity": json_safe(answer.similarity),
        "outside": list(answer.outside),
        "unavailable": list(answer.unavailable),
        "timings": json_safe(dict(answer.timings)),
        "segments": [{"name": s.name, "terminology": s.entry.to_dict(), "mask": encode_volume_mask(s.mask)} for s in answer.segments],
    }


def anatomy_from_wire(data: dict, shape: tuple[int, int, int]):
    from ..anatomy import AnatomyAnswer
    from ..segments import Segment
    from ..terminology import TerminologyEntry

    try:
        segments = []
        for index, item in enumerate(data.get("segments", [])):
            mask = decode_volume_mask(item["mask"], math.prod(shape))
            if mask.shape != tuple(shape):
                raise WireError(f"a segment's mask has shape {mask.shape}, the volume {tuple(shape)}")
            segments.append(Segment(index + 1, str(item["name"]), TerminologyEntry.from_dict(item["terminology"]), mask))
        similarity = data.get("similarity")
        return AnatomyAnswer(str(data["text"]), segments, str(data.get("atlas", "")), [str(n) for n in data.get("unavailable", [])],
                             [str(n) for n in data.get("outside", [])], None if similarity is None else float(similarity),
                             {str(k): float(v) for k, v in (data.get("timings") or {}).items() if isinstance(v, (int, float))})
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise WireError(f"malformed 3D answer from the server: {error}") from None
