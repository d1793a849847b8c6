"""Understanding image encoder: the feature map the language model reads (through the aligner).

MIMO separates the encoder that *understands* an image (CLIP-like, semantic) from the one that
*grounds* it (SAM-like, spatially precise). On a CPU a second encoder would double the cost of
every image, so the tiny preset reuses the grounding embedding (``kind="grounding"``: this
module then has no weights). At scale any transformers vision tower works
(``kind="vision_model"``: CLIPVisionModel, SiglipVisionModel, ... built from its config or
read from a local directory).

Either way the output is a feature *map* (B, C, h, w): the aligner pools it into image tokens
and the visual-prompt encoder pools it inside each prompt's mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from .configuration import UnderstandingConfig


def _vision_model_class(vision_config):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(vision_config)]
    except KeyError as error:
        raise BackendError(f"{type(vision_config).__name__} is not a transformers vision model configuration") from error


def _vision_config_from(data: dict):
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise BackendError("understanding.vision_config needs a model_type (e.g. 'clip_vision_model')")
    return AutoConfig.for_model(model_type, **data)


class UnderstandingEncoder(nn.Module):
    def __init__(self, config: UnderstandingConfig, grounding_dim: int) -> None:
        super().__init__()
        self.kind = config.kind
        self.feature_layer = config.feature_layer
        self.vision_model: nn.Module | None = None
        self.feature_dim = grounding_dim
        if config.kind == "vision_model":
            self.vision_model = self._build_vision_model(config)
            vision_config = self.vision_model.config
            self.feature_dim = int(vision_config.hidden_size)
            self.grid = int(vision_config.image_size) // int(vision_config.patch_size)

    @staticmethod
    def _build_vision_model(config: UnderstandingConfig) -> nn.Module:
        """From the local weights directory when given (its config wins), else from the config."""
        if config.weights is None:
            vision_config = _vision_config_from(config.vision_config)
            return _vision_model_class(vision_config)(vision_config)
        from transformers import AutoConfig

        path = Path(config.weights)
        if not (path / "config.json").is_file():
            raise BackendError(f"vision tower weights {path} are not a transformers model directory (no config.json)")
        loaded = AutoConfig.from_pretrained(path, local_files_only=True)
        vision_config = getattr(loaded, "vision_config", loaded)  # a full CLIP/SigLIP checkpoint holds a vision tower
        model = _vision_model_class(vision_config).from_pretrained(path, config=vision_config, local_files_only=True)
        config.vision_config = vision_config.to_dict()
        config.image_size = int(vision_config.image_size)
        return model

    def forward(self, grounding_embedding: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """(B, C, h, w) understanding features."""
        if self.vision_model is None:
            return grounding_embedding
        if pixel_values is None:
            raise BackendError("this MIMO model needs vision_pixel_values for its understanding encoder")
        outputs = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        tokens = outputs.hidden_states[self.feature_layer]
        if tokens.shape[1] == self.grid * self.grid + 1:  # CLIP prepends a class token
            tokens = tokens[:, 1:]
        batch, _, channels = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, channels, self.grid, self.grid)
