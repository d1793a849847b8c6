"""MimoForConditionalGeneration: MIMO's parts joined into one model.

Data flow of one turn::

    slice --grounding encoder--> G (B, 256, 64, 64) --understanding--> U (B, C, h, w)
    prompts (rasterised) --visual-prompt encoder(U)--> P (B, R, D)
    queries x [U tokens; question embeddings; P] --aligner--> <image> tokens, <region> tokens
    LM(prompt with those tokens) --> "... <p>term</p><SEG> ..."
    hidden(<SEG>) --projection--> sparse prompt (+ k-th visual prompt) --SAM decoder(G)--> mask

Image features are computed once per image (:meth:`encode_images`) and can be handed back to
:meth:`forward` and :meth:`generate` (``image_features=``), so a second question about the same
slice costs only the aligner, the LM and the mask decoder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BackendError
from .aligner import MultiModalInputAligner
from .box_decoder import BoxDecoderBlend
from .box_prior import BoxPrior
from .box_teacher import BoxTeacher
from .configuration import MimoConfig
from .generation import generate_tokens
from .grounding import build_grounding
from .language_model import build_language_model
from .losses import mask_bce_loss, mask_dice_loss, next_token_loss
from .mask_refiner import MaskRefiner
from .pixel_decoder import SegProjection, confine_to_regions, decode_seg_masks
from .understanding import UnderstandingEncoder
from .visual_prompt import VisualPromptEncoder


@dataclass
class ImageFeatures:
    """What the encoders computed for a batch of images; cache it per image."""

    grounding: torch.Tensor  # (B, C, h, w), SAM image embedding
    understanding: torch.Tensor  # (B, D, h', w')
    pixels: torch.Tensor | None = None  # (B, 3, R, R), the mask refiner's canvas (models with a refiner)

    @classmethod
    def cat(cls, features: list[ImageFeatures]) -> ImageFeatures:
        pixels = [f.pixels for f in features]
        return cls(
            torch.cat([f.grounding for f in features]),
            torch.cat([f.understanding for f in features]),
            torch.cat(pixels) if all(p is not None for p in pixels) else None,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageFeatures:
        """On ``device`` (and in ``dtype``), keeping one tensor where understanding is grounding."""
        grounding = self.grounding.to(device, dtype)
        understanding = grounding if self.understanding is self.grounding else self.understanding.to(device, dtype)
        pixels = None if self.pixels is None else self.pixels.to(device, dtype)
        return ImageFeatures(grounding, understanding, pixels)


@dataclass
class MimoOutput:
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    mask_bce_loss: torch.Tensor | None
    mask_dice_loss: torch.Tensor | None
    logits: torch.Tensor  # (B, L, V)
    mask_logits: torch.Tensor | None  # (K, m, m), one per <SEG> in input_ids, batch-major
    mask_teacher_loss: torch.Tensor | None = None
    """The box teacher's term (:mod:`.box_teacher`), unweighted; None when off or nothing was taught."""


@dataclass
class MimoGeneration:
    token_ids: list[int]
    mask_logits: torch.Tensor  # (K, m, m), one per generated <SEG>
    stop_reason: str
    timings: dict[str, float]
    token_probabilities: list[float] | None = None
    """The model's probability of each token in ``token_ids``."""


class MimoForConditionalGeneration(nn.Module):
    def __init__(self, config: MimoConfig) -> None:
        """Build every part from ``config``, reading referenced weights (package, local paths).

        ``config.token_ids`` must hold the tokenizer's MIMO token ids and the LM config its
        vocabulary size: use :meth:`from_config` with a tokenizer, or :meth:`from_pretrained`.
        """
        super().__init__()
        config.validate()
        if not config.token_ids:
            raise BackendError("the configuration has no token ids: build the model with MimoForConditionalGeneration.from_config(config, tokenizer)")
        self.config = config
        self.token_ids = dict(config.token_ids)
        self.grounding = build_grounding(config.grounding)
        self.understanding = UnderstandingEncoder(config.understanding, self.grounding.embedding_dim)
        self.language_model = build_language_model(config.language_model, int(config.language_model.config["vocab_size"]))
        hidden = int(self.language_model.config.hidden_size)
        aligner = config.aligner
        self.visual_prompt_encoder = VisualPromptEncoder(self.understanding.feature_dim, aligner.hidden_size)
        self.aligner = MultiModalInputAligner(
            image_dim=self.understanding.feature_dim,
            text_dim=hidden,
            hidden_size=aligner.hidden_size,
            output_dim=hidden,
            num_queries=aligner.num_queries,
            num_layers=aligner.num_layers,
            num_heads=aligner.num_heads,
            mlp_ratio=aligner.mlp_ratio,
            image_token_grid=aligner.image_token_grid,
        )
        self.seg_projection = SegProjection(hidden, self.grounding.embedding_dim, config.segmentation.num_seg_tokens)
        refiner = config.refiner
        self.mask_refiner = (
            MaskRefiner(self.grounding.embedding_dim, refiner.size, tuple(refiner.channels)) if refiner.enabled else None
        )
        self.box_prior = self._new_box_prior() if config.segmentation.box_prior else None
        self.box_decoder = BoxDecoderBlend(self._pretrained_mask_decoder()) if config.segmentation.box_decoder_weight < 1 else None
        self.box_teacher: BoxTeacher | None = None
        """Training only (:meth:`add_box_teacher`): a model loaded for inference has none."""
        self._freeze()

    @classmethod
    def from_config(cls, config: MimoConfig, tokenizer) -> MimoForConditionalGeneration:
        """A new model (random new parts, referenced weights loaded) for ``tokenizer``."""
        from .tokenization import mimo_token_ids

        config.token_ids = mimo_token_ids(tokenizer)
        text_config = config.language_model.config
        text_config["vocab_size"] = len(tokenizer)
        if config.language_model.weights is None:  # a new LM speaks this tokenizer's control tokens
            text_config.update(
                bos_token_id=tokenizer.bos_token_id, eos_token_id=config.token_ids["eos"], pad_token_id=config.token_ids["pad"]
            )
        return cls(config)

    # ----- parameters ---------------------------------------------------------------------

    def widen_mask_refiner(self, channels: tuple[int, int, int], seed: int = 0) -> None:
        """Give the mask refiner more channels without changing any mask it draws (see
        :meth:`MaskRefiner.widened`); the configuration records the new size for saving."""
        if self.mask_refiner is None:
            raise BackendError("this MIMO model has no mask refiner to widen")
        reference = next(self.mask_refiner.parameters())
        self.mask_refiner = self.mask_refiner.widened(channels, seed).to(reference.device, reference.dtype)
        self.config.refiner.channels = tuple(self.mask_refiner.channels)

    def _pretrained_mask_decoder(self) -> nn.Module:
        """A new copy of the grounding model's decoder with the package's own weights (for the
        box prior and the box decoder): this model's decoder may already hold fine-tuned ones."""
        return build_grounding(self.config.grounding).mask_decoder

    def _new_box_prior(self) -> BoxPrior:
        return BoxPrior(self._pretrained_mask_decoder(), self.grounding.embedding_dim)

    def add_box_prior(self) -> None:
        """Give a trained model a box prior (:mod:`.box_prior`); its gate starts closed, so the
        masks stay as they were until it learns. The configuration records it for saving."""
        if self.box_prior is not None:
            raise BackendError("this MIMO model already has a box prior")
        reference = next(self.seg_projection.parameters())
        self.box_prior = self._new_box_prior().to(reference.device, reference.dtype)
        self.config.segmentation.box_prior = True

    def set_box_decoder_weight(self, weight: float) -> None:
        """Decode masks answering a box or lasso with ``weight`` x this model's decoder weights +
        (1 - weight) x the pretrained ones (:mod:`.box_decoder`; 1: this model's decoder alone).
        The configuration records it for saving."""
        previous = self.config.segmentation.box_decoder_weight
        self.config.segmentation.box_decoder_weight = weight
        try:
            self.config.validate()
        except BackendError:
            self.config.segmentation.box_decoder_weight = previous
            raise
        if weight >= 1:
            self.box_decoder = None
        elif self.box_decoder is None:
            reference = next(self.seg_projection.parameters())
            self.box_decoder = BoxDecoderBlend(self._pretrained_mask_decoder()).to(reference.device, reference.dtype)

    def add_box_teacher(self) -> None:
        """Teach masks answering a box or lasso from the pretrained decoder while training, with
        the configuration's ``loss.box_teacher_weight`` and ``loss.box_teacher_min_dice``
        (:mod:`.box_teacher`). The teacher is never saved."""
        if self.config.grounding.weights is None:
            raise BackendError("a box teacher needs the grounding part's pretrained weights, and this model has none "
                               "(grounding.weights is null: randomly initialised)")
        if self.box_teacher is None:
            reference = next(self.seg_projection.parameters())
            self.box_teacher = BoxTeacher(self._pretrained_mask_decoder()).to(reference.device, reference.dtype)

    def _frozen_modules(self) -> list[nn.Module]:
        grounding = self.config.grounding
        frozen = [
            module
            for module, train in (
                (self.grounding.image_encoder, grounding.train_image_encoder),
                (self.grounding.prompt_encoder, grounding.train_prompt_encoder),
                (self.grounding.mask_decoder, grounding.train_mask_decoder),
            )
            if not train
        ]
        if self.understanding.vision_model is not None and not self.config.understanding.train:
            frozen.append(self.understanding.vision_model)
        if self.config.language_model.training == "frozen":
            frozen.append(self.language_model)
        if self.box_prior is not None:
            frozen.append(self.box_prior.mask_decoder)
        if self.box_decoder is not None:
            frozen.append(self.box_decoder.pretrained)
        if self.box_teacher is not None:
            frozen.append(self.box_teacher.pretrained)
        return frozen

    def _freeze(self) -> None:
        """Freeze what the configuration says; LoRA already froze the base LM's weights."""
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> MimoForConditionalGeneration:
        """Frozen parts stay in eval mode: TinyViT's batch norms must keep their statistics."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.seg_projection.mlp[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.seg_projection.mlp[0].weight.dtype

    # ----- encoders -----------------------------------------------------------------------

    def encode_images(
        self,
        grounding_pixel_values: torch.Tensor,
        vision_pixel_values: torch.Tensor | None = None,
        refine_pixel_values: torch.Tensor | None = None,
    ) -> ImageFeatures:
        grounding = self.grounding.encode(grounding_pixel_values.to(self.device, self.dtype))
        if vision_pixel_values is not None:
            vision_pixel_values = vision_pixel_values.to(self.device, self.dtype)
        if refine_pixel_values is not None:
            refine_pixel_values = refine_pixel_values.to(self.device, self.dtype)
        return ImageFeatures(grounding, self.understanding(grounding, vision_pixel_values), refine_pixel_values)

    def _features(self, image_features, grounding_pixel_values, vision_pixel_values, refine_pixel_values=None) -> ImageFeatures:
        if image_features is None:
            if grounding_pixel_values is None:
                raise BackendError("give grounding_pixel_values (from MimoProcessor.preprocess_image) or cached image_features")
            image_features = self.encode_images(grounding_pixel_values, vision_pixel_values, refine_pixel_values)
        return image_features.to(self.device)

    def input_embeddings(
        self,
        input_ids: torch.Tensor,
        question_mask: torch.Tensor,
        region_masks: torch.Tensor,
        region_types: torch.Tensor,
        region_boxes: torch.Tensor,
        features: ImageFeatures,
    ) -> torch.Tensor:
        """Token embeddings with ``<image>`` replaced by the aligner's queries and each ``<region>``
        by its visual prompt's embedding."""
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        valid_regions = region_types >= 0
        prompt_embeddings = self.visual_prompt_encoder(
            features.understanding, region_masks.to(self.device, self.dtype), region_types, region_boxes.to(self.device, self.dtype)
        )
        image_tokens, region_tokens = self.aligner(features.understanding, embeddings, question_mask, prompt_embeddings, valid_regions)
        image_positions = input_ids == self.token_ids["image"]
        region_positions = input_ids == self.token_ids["region"]
        image_counts = image_positions.sum(1)
        if not torch.all(image_counts == self.aligner.num_queries):
            raise BackendError(f"every sample needs {self.aligner.num_queries} <image> tokens, found {image_counts.tolist()}")
        if not torch.equal(region_positions.sum(1), valid_regions.sum(1)):
            raise BackendError(
                f"<region> tokens per sample {region_positions.sum(1).tolist()} do not match the visual prompts {valid_regions.sum(1).tolist()}"
            )
        embeddings = embeddings.clone()
        embeddings[image_positions] = image_tokens.reshape(-1, image_tokens.shape[-1]).to(embeddings.dtype)
        embeddings[region_positions] = region_tokens[valid_regions].to(embeddings.dtype)
        return embeddings

    def _decode_masks(self, features: ImageFeatures, seg_hidden, seg_batch, seg_rank, region_types, decoder_boxes) -> tuple[torch.Tensor, torch.Tensor]:
        """(final, coarse) mask logits, one per ``<SEG>``: the decoder's own masks, and those
        refined and mixed with the box prior (the same tensor twice when the model has neither)."""
        prompts = self.seg_projection(seg_hidden.to(self.dtype))
        coarse = decode_seg_masks(
            self.grounding,
            features.grounding,
            prompts,
            seg_batch,
            seg_rank,
            region_types.to(self.device),
            decoder_boxes.to(self.device, self.dtype),
            self.config.segmentation.decoder_visual_prompts,
            self.box_decoder.decoder(self.grounding.mask_decoder, self.config.segmentation.box_decoder_weight)
            if self.box_decoder is not None else None,
        )
        masks = coarse
        if self.mask_refiner is not None:
            if features.pixels is None:
                raise BackendError("this MIMO model refines its masks and needs the refiner's pixels "
                                   "(refine_pixel_values from MimoProcessor.preprocess_image, or ImageFeatures.pixels)")
            masks = self.mask_refiner(features.pixels, coarse, seg_batch, prompts.mean(dim=1))
        if self.box_prior is not None:
            masks = self.box_prior(self.grounding, features.grounding, masks, prompts, seg_batch, seg_rank,
                                   region_types.to(self.device), decoder_boxes.to(self.device, self.dtype))
        return masks, coarse

    # ----- training -----------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        question_mask: torch.Tensor,
        region_masks: torch.Tensor,
        region_types: torch.Tensor,
        region_boxes: torch.Tensor,
        decoder_boxes: torch.Tensor,
        labels: torch.Tensor | None = None,
        target_masks: torch.Tensor | None = None,
        grounding_pixel_values: torch.Tensor | None = None,
        vision_pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        refine_pixel_values: torch.Tensor | None = None,
        decode_masks: bool = True,
    ) -> MimoOutput:
        """Teacher-forced pass. ``loss`` is the weighted sum of the next-token loss (with
        ``labels``) and the mask losses (with ``target_masks``, one per ``<SEG>`` in ``input_ids``).

        ``decode_masks=False`` skips the mask decoder, the costly part on a CPU, for steps that
        train the text only.
        """
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        region_types = region_types.to(device)
        features = self._features(image_features, grounding_pixel_values, vision_pixel_values, refine_pixel_values)
        embeddings = self.input_embeddings(input_ids, question_mask.to(device), region_masks, region_types, region_boxes, features)
        outputs = self.language_model(inputs_embeds=embeddings, attention_mask=attention_mask, output_hidden_states=True)
        mask_logits = None
        if decode_masks:
            seg_positions = (input_ids == self.token_ids["seg"]) & attention_mask.bool()
            seg_batch, seg_index = torch.nonzero(seg_positions, as_tuple=True)
            seg_rank = (torch.cumsum(seg_positions.long(), dim=1) - 1)[seg_batch, seg_index]
            seg_hidden = outputs.hidden_states[-1][seg_batch, seg_index]
            mask_logits, coarse_logits = self._decode_masks(features, seg_hidden, seg_batch, seg_rank, region_types, decoder_boxes)
        elif target_masks is not None:
            raise BackendError("target_masks were given but decode_masks is False")

        weights = self.config.loss
        lm_loss = bce = dice = teacher = None
        total = []
        if labels is not None:
            lm_loss = next_token_loss(outputs.logits, labels.to(device))
            total.append(weights.lm_weight * lm_loss)
        if target_masks is not None:
            if target_masks.shape[0] != mask_logits.shape[0]:
                raise BackendError(f"{mask_logits.shape[0]} <SEG> tokens in the batch but {target_masks.shape[0]} target masks")
            if mask_logits.shape[0]:
                targets = target_masks.to(device)
                bce, dice = mask_bce_loss(mask_logits, targets), mask_dice_loss(mask_logits, targets)
                total += [weights.bce_weight * bce, weights.dice_weight * dice]
                if coarse_logits is not mask_logits:  # the decoder keeps learning its own masks too
                    coarse = F.interpolate(coarse_logits[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                    aux = weights.bce_weight * mask_bce_loss(coarse, targets) + weights.dice_weight * mask_dice_loss(coarse, targets)
                    total.append(self.config.refiner.coarse_weight * aux)
                if self.box_teacher is not None and weights.box_teacher_weight > 0:
                    teacher = self.box_teacher.loss(
                        self.grounding, features.grounding, coarse_logits, targets, seg_batch, seg_rank, region_types,
                        decoder_boxes.to(device, self.dtype), weights.box_teacher_min_dice,
                    )
                    if teacher is not None:
                        total.append(weights.box_teacher_weight * teacher)
        loss = torch.stack(total).sum() if total else None
        return MimoOutput(loss, lm_loss, bce, dice, outputs.logits, mask_logits, teacher)

    # ----- inference ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        question_mask: torch.Tensor,
        region_masks: torch.Tensor,
        region_types: torch.Tensor,
        region_boxes: torch.Tensor,
        decoder_boxes: torch.Tensor,
        grounding_pixel_values: torch.Tensor | None = None,
        vision_pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        refine_pixel_values: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        on_token: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
        forced_token_ids: list[int] | tuple[int, ...] = (),
    ) -> MimoGeneration:
        """Answer one turn (batch of one): generated token ids and one mask per ``<SEG>``.

        ``on_token(token_id)`` is called for every token as it is generated (see
        :meth:`MimoProcessor.text_streamer`); ``cancel`` stops generation at the next token;
        ``forced_token_ids`` start the answer (see :func:`.generation.generate_tokens`).
        Keyword arguments other than the inputs follow transformers' ``generate``.
        """
        if input_ids.shape[0] != 1:
            raise BackendError("generate answers one turn at a time (batch size 1)")
        device = self.device
        input_ids, region_types = input_ids.to(device), region_types.to(device)
        features = self._features(image_features, grounding_pixel_values, vision_pixel_values, refine_pixel_values)
        start = time.perf_counter()
        embeddings = self.input_embeddings(input_ids, question_mask.to(device), region_masks, region_types, region_boxes, features)
        ids = self.token_ids
        stop = {ids["eos"], *_generation_eos_ids(self.language_model)}
        tokens = generate_tokens(
            self.language_model,
            embeddings,
            attention_mask.to(device),
            seg_token_id=ids["seg"],
            stop_token_ids=stop,
            suppressed_token_ids=sorted(self._unwritable_token_ids() - stop),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            on_token=on_token,
            cancel=cancel,
            forced_token_ids=forced_token_ids,
        )
        generated = time.perf_counter()
        count = tokens.seg_hidden_states.shape[0]
        seg_batch = torch.zeros(count, dtype=torch.long, device=device)
        seg_rank = torch.arange(count, device=device)
        mask_logits, _ = self._decode_masks(features, tokens.seg_hidden_states, seg_batch, seg_rank, region_types, decoder_boxes)
        mask_logits = confine_to_regions(mask_logits, seg_batch, seg_rank, region_types, decoder_boxes.to(device),
                                         self.grounding.image_size)
        timings = {
            "generate_s": generated - start,
            "decode_masks_s": time.perf_counter() - generated,
            "new_tokens": float(len(tokens.token_ids)),
        }
        return MimoGeneration(tokens.token_ids, mask_logits.float(), tokens.stop_reason, timings, tokens.probabilities)

    def _unwritable_token_ids(self) -> set[int]:
        """Placeholders and the start of sequence never belong in an answer."""
        ids = {self.token_ids["image"], self.token_ids["region"], self.token_ids["pad"]}
        bos = getattr(self.language_model.config, "bos_token_id", None)
        return ids | ({int(bos)} if isinstance(bos, int) else set())

    # ----- checkpoints --------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (trained parts only; see :mod:`.checkpoint`)."""
        from .checkpoint import save_model

        save_model(self, Path(directory))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **weight_paths: str
    ) -> MimoForConditionalGeneration:
        """Load a checkpoint written by :meth:`save_pretrained`.

        ``weight_paths`` (``text_model_path``, ``vision_model_path``, ``sam_model_path``) point
        referenced parts at another local directory than the one recorded.
        """
        from .checkpoint import load_model

        return load_model(cls, Path(directory), torch.device(device), dtype, **weight_paths)


def _generation_eos_ids(language_model: nn.Module) -> set[int]:
    """Chat LMs often end a turn with a token other than eos (Llama 3's <|eot_id|>)."""
    generation_config = getattr(language_model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}
