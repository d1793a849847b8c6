"""Token generation with a KV cache: greedy or sampled, streamed, cancellable.

The loop is MIMO's own rather than ``LM.generate`` because MIMO needs the last hidden state at
every ``<SEG>`` the model writes, which is only computed when that token is fed back: each
generated token is fed once (the KV cache makes that one token's worth of work), and the hidden
state of each ``<SEG>`` is kept. ``forced_token_ids`` are written first, whatever the model
would choose (constrained decoding: the answer starts with the term the user asked for), and the
probability the model gave each written token is recorded. Generation stops at an end-of-sequence token, at
``max_new_tokens`` or when ``cancel`` is set; which of the three is reported.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TokenGeneration:
    token_ids: list[int]
    seg_hidden_states: torch.Tensor  # (K, H), one row per generated <SEG>
    stop_reason: str  # "eos", "max_new_tokens" or "cancelled"
    probabilities: list[float]  # the model's probability of each written token (forced ones included)


def next_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Greedy, or nucleus sampling at ``temperature`` from the smallest set of tokens holding ``top_p``."""
    if not do_sample:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    ordered, order = torch.sort(probabilities, descending=True)
    keep = torch.cumsum(ordered, dim=-1) - ordered < top_p
    ordered = ordered * keep
    choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(order[choice])


def generate_tokens(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    seg_token_id: int,
    stop_token_ids: set[int],
    suppressed_token_ids: list[int],
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    on_token: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    forced_token_ids: Sequence[int] = (),
) -> TokenGeneration:
    """Generate after a prompt of embeddings (batch of one)."""
    from transformers import DynamicCache

    cache = {_cache_keyword(language_model): DynamicCache(config=language_model.config)}  # filled in place by each call
    outputs = language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=True, output_hidden_states=True, **cache)
    tokens: list[int] = []
    probabilities: list[float] = []
    seg_states: list[torch.Tensor] = []
    stop_reason = "max_new_tokens"
    for step in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
            break
        logits = outputs.logits[0, -1].clone()
        logits[suppressed_token_ids] = float("-inf")
        token = int(forced_token_ids[step]) if step < len(forced_token_ids) else next_token(logits, do_sample, temperature, top_p, generator)
        if token in stop_token_ids:
            stop_reason = "eos"
            break
        tokens.append(token)
        probabilities.append(float(torch.softmax(logits.float(), dim=-1)[token]))
        if on_token is not None:
            on_token(token)
        if step == max_new_tokens - 1 and token != seg_token_id:
            break  # nothing would read this token's state
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((1, 1))], dim=1)
        outputs = language_model(
            input_ids=torch.tensor([[token]], device=attention_mask.device),
            attention_mask=attention_mask,
            use_cache=True,
            output_hidden_states=True,
            **cache,
        )
        if token == seg_token_id:
            seg_states.append(outputs.hidden_states[-1][0, -1])
    hidden_size = inputs_embeds.shape[-1]
    states = torch.stack(seg_states) if seg_states else inputs_embeds.new_zeros((0, hidden_size))
    return TokenGeneration(tokens, states, stop_reason, probabilities)


def _cache_keyword(language_model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); accept either."""
    base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
