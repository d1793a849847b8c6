"""Modality-aware conversion of raw slice intensities to the 8-bit RGB image a model sees.

CT uses window presets in Hounsfield units (a radiologist's windows, not min-max: min-max of
a CT slice is dominated by air and metal); MR and other scalar images use percentile scaling
because their units are arbitrary; RGB images pass through unchanged.
"""

from __future__ import annotations

import numpy as np

from .errors import MimoError

#: (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "abdomen": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}
DEFAULT_CT_WINDOW = "soft-tissue"
PERCENTILES = (0.5, 99.5)


def window_to_uint8(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        raise MimoError(f"intensity window is empty: low {low} >= high {high}")
    scaled = (pixels.astype(np.float32) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_display_rgb(pixels: np.ndarray, modality: str, window: str | tuple[float, float] | None = None) -> np.ndarray:
    """Raw slice ``(H, W)`` or ``(H, W, 3)`` -> ``uint8 (H, W, 3)``.

    ``window`` is a CT preset name or an explicit ``(level, width)``; ignored for RGB.
    """
    if pixels.ndim == 3:
        if pixels.shape[2] != 3:
            raise MimoError(f"colour slice must have 3 channels, got {pixels.shape[2]}")
        if pixels.dtype == np.uint8:
            return np.ascontiguousarray(pixels)
        return window_to_uint8(pixels, float(np.min(pixels)), float(max(np.max(pixels), np.min(pixels) + 1)))
    if pixels.ndim != 2:
        raise MimoError(f"slice must be 2D, got shape {pixels.shape}")
    finite = np.isfinite(pixels)
    if not finite.all():
        pixels = np.where(finite, pixels, np.min(pixels[finite]) if finite.any() else 0)
    if isinstance(window, tuple):
        level, width = window
        low, high = level - width / 2, level + width / 2
    elif modality == "CT" or window is not None:
        name = window or DEFAULT_CT_WINDOW
        if name not in CT_WINDOWS:
            raise MimoError(f"unknown CT window {name!r}; choose one of {', '.join(CT_WINDOWS)}")
        level, width = CT_WINDOWS[name]
        low, high = level - width / 2, level + width / 2
    elif pixels.dtype == np.uint8 and modality in ("US", "XR", "OT", "RGB"):
        # 8-bit photographs and screen captures are already display-scaled.
        low, high = 0.0, 255.0
    else:
        low, high = (float(v) for v in np.percentile(pixels, PERCENTILES))
        if high <= low:
            high = low + 1.0
    grey = window_to_uint8(pixels, low, high)
    return np.repeat(grey[:, :, None], 3, axis=2)
