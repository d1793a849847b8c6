"""The causal language model: built from a config (tiny, trained from scratch) or read from a
local directory (7B chat models), with MIMO's special tokens added and optional LoRA.

Nothing here downloads: a pretrained LM is read with ``local_files_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from .configuration import LanguageModelConfig


def _text_config_from(data: dict):
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def build_language_model(config: LanguageModelConfig, vocab_size: int) -> nn.Module:
    """The LM with room for ``vocab_size`` tokens (the tokenizer's length, MIMO tokens included).

    New embedding rows (the added tokens of a pretrained LM) are set to the mean of the existing
    rows rather than sampled: a checkpoint that references the base LM must rebuild exactly the
    same rows every time it is loaded.
    """
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, config.dtype)
    if config.weights is None:
        model = AutoModelForCausalLM.from_config(_text_config_from(config.config), dtype=dtype)
    else:
        path = Path(config.weights)
        if not (path / "config.json").is_file():
            raise BackendError(f"language model weights {path} are not a transformers model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        config.config = model.config.to_dict()
    old_size = model.get_input_embeddings().weight.shape[0]
    if vocab_size != old_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            for embeddings in {model.get_input_embeddings(), model.get_output_embeddings()}:
                if embeddings is not None and vocab_size > old_size:
                    embeddings.weight[old_size:] = embeddings.weight[:old_size].mean(0)
        config.config["vocab_size"] = vocab_size
    if config.training == "lora":
        model = add_lora(model, config, new_token_ids=list(range(old_size, vocab_size)))
    return model


def add_lora(model: nn.Module, config: LanguageModelConfig, new_token_ids: list[int]) -> nn.Module:
    """Wrap the LM with peft LoRA adapters; the added tokens' rows train too (peft trainable tokens),
    because the base model has never seen ``<SEG>`` and must learn to write it."""
    from peft import LoraConfig, get_peft_model

    trainable_tokens = None
    if new_token_ids:
        names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
        trainable_tokens = {names[model.get_input_embeddings()]: new_token_ids}
        if not model.config.tie_word_embeddings:
            trainable_tokens[names[model.get_output_embeddings()]] = new_token_ids
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        trainable_token_indices=trainable_tokens,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
