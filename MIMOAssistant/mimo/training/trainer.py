"""``mimo-assistant train CONFIG``: the training loop, built on accelerate.

The same code runs on one CPU, one GPU, several GPUs or several nodes: launch it plainly for
one process, or with ``accelerate launch --config_file mimo/training/configs/<...>.yaml`` for
several (DDP, DeepSpeed ZeRO-2, FSDP). What it does, in order:

1. builds the model (a preset or an initial checkpoint) and sets which parts train;
2. reads the samples (train and val split, capped as the configuration says);
3. encodes every image once into the feature cache (resumable, with a progress bar; each
   process encodes its share);
4. trains: the first ``text_warmup_steps`` steps teach the text alone (no mask decoding), then
   text and masks; perspectives mixed by weight; batches augmented; losses, learning rate,
   gradient norm and time per step appended to ``training_log.jsonl``; validation losses and
   teacher-forced mask Dice every ``eval_every`` steps; a resumable checkpoint (model's trained
   parts as safetensors, optimizer, scheduler, random states) every ``save_every`` steps;
5. stops at once, with a message naming the step and the loss term, when a loss or the
   gradient norm is NaN or infinite;
6. writes the final model with :func:`mimo.modeling.save_mimo` to ``OUTPUT/final``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MimoError
from .batches import BatchBuilder, StepBatches, image_ref, move_batch
from .config import ConfigError, TrainConfig
from .features import FeatureCache
from .samples import Example, box_seg_variants, cap_per_key, load_examples

LOG_FILE = "training_log.jsonl"
SELECTION_FILE = "train_images.json"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
FINAL = "final"
LOSS_TERMS = ("lm_loss", "mask_bce_loss", "mask_dice_loss", "mask_teacher_loss")
RESEARCH_NOTE = (
    "Trained on public research data whose licences are mostly research-only (see the data's README): "
    "a research/demo artifact. Not for clinical use."
)


class TrainingError(MimoError):
    """Training cannot start or continue."""


class TrainingDiverged(TrainingError):
    """A loss or the gradient norm became NaN or infinite."""

    def __init__(self, message: str, step: int, term: str) -> None:
        super().__init__(message)
        self.step = step
        self.term = term


@dataclass
class TrainResult:
    output_dir: Path
    final_checkpoint: Path | None
    steps_done: int
    log_path: Path
    history: list[dict] = field(default_factory=list)
    """The step records of this process's run (not those before a resume)."""
    encode: dict = field(default_factory=dict)
    interrupted: bool = False


# ----- model ---------------------------------------------------------------------------------


def build_model(config: TrainConfig):
    from ..modeling import create_mimo_7b, create_mimo_tiny, load_mimo

    section = config.model
    if section.init_checkpoint:
        model, processor = load_mimo(config.path(section.init_checkpoint))
        if section.widen_refiner_to is not None:
            model.widen_mask_refiner(tuple(section.widen_refiner_to), seed=section.seed)
        if section.add_box_prior and model.box_prior is None:
            model.add_box_prior()
        if section.box_decoder_weight is not None:
            model.set_box_decoder_weight(section.box_decoder_weight)
        return model, processor
    if section.preset == "mimo-tiny":
        return create_mimo_tiny(seed=section.seed)
    return create_mimo_7b(
        config.path(section.text_model_path), config.path(section.vision_model_path), config.path(section.sam_model_path),
        dtype=section.dtype, seed=section.seed,
    )


def configure_parts(model, config: TrainConfig) -> None:
    """Apply ``train`` (which parts learn) and ``loss`` (weights) to the model and its configuration.

    Turning a part on also marks it trained in the model configuration, so the checkpoint saves
    it; turning a part off only stops its gradients (a part trained before is still saved).
    """
    from ..modeling.language_model import is_peft_model

    parts = config.train
    grounding = model.config.grounding
    for name, flag in (("image_encoder", "train_image_encoder"), ("prompt_encoder", "train_prompt_encoder"),
                       ("mask_decoder", "train_mask_decoder")):
        value = getattr(parts, name)
        if value is None:
            continue
        if value:
            setattr(grounding, flag, True)
        getattr(model.grounding, name).requires_grad_(bool(value))
    if parts.language_model == "frozen":
        model.language_model.requires_grad_(False)
    elif parts.language_model == "full" and not is_peft_model(model.language_model):
        model.config.language_model.training = "full"
        model.language_model.requires_grad_(True)
    for name in ("aligner", "visual_prompt_encoder", "seg_projection", "mask_refiner"):
        module = getattr(model, name)
        if module is not None:
            module.requires_grad_(bool(getattr(parts, name)))
    if model.box_prior is not None:
        model.box_prior.gate.requires_grad_(bool(parts.box_prior))
    for name in ("lm_weight", "bce_weight", "dice_weight", "box_teacher_weight", "box_teacher_min_dice"):
        value = getattr(config.loss, name)
        if value is not None:
            setattr(model.config.loss, name, float(value))
    model.config.loss.validate()
    if model.config.loss.box_teacher_weight > 0:
        model.add_box_teacher()


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model, optimizer_section) -> list[dict]:
    """Trainable parameters in optimizer groups: the default learning rate first, then one group
    per part named in ``optimizer.part_lr``."""
    from .config import PARTS

    groups: dict[str, list] = {"default": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = next((p for p, prefix in PARTS.items() if name.startswith(prefix) and p in optimizer_section.part_lr), "default")
        groups.setdefault(part, []).append(parameter)
    result = [{"params": groups.pop("default"), "lr": optimizer_section.lr, "name": "default"}]
    result += [{"params": params, "lr": float(optimizer_section.part_lr[part]), "name": part} for part, params in groups.items() if params]
    return [group for group in result if group["params"]]


def load_trained_weights(model, directory: Path) -> None:
    """Put the trained parts saved by :func:`mimo.modeling.save_mimo` into ``model`` (same configuration)."""
    from safetensors.torch import load_file

    from ..modeling.checkpoint import ADAPTER_PREFIX, WEIGHTS_FILE, trained_state_dict

    state = load_file(str(directory / WEIGHTS_FILE))
    expected = set(trained_state_dict(model))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise TrainingError(f"{directory} does not match this run's model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    device = model.device
    plain = {k: v.to(device) for k, v in state.items() if not k.startswith(ADAPTER_PREFIX)}
    adapter = {k[len(ADAPTER_PREFIX):]: v.to(device) for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
    result = model.load_state_dict(plain, strict=False)
    if result.unexpected_keys:
        raise TrainingError(f"{directory} holds tensors the model cannot place: {result.unexpected_keys[:3]}")
    if adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.language_model, adapter)
    if hasattr(model.language_model, "tie_weights"):
        model.language_model.tie_weights()


# ----- data ----------------------------------------------------------------------------------


def training_examples(config: TrainConfig, cache: FeatureCache | None = None, chosen: set[str] | None = None) -> tuple[list[Example], list[Example]]:
    """Train and val examples. ``chosen``: the train images of the run being resumed (kept first
    under the cap, so a resumed run trains on the same images whatever the cache holds now)."""
    sampling = config.sampling
    data = config.data_path
    prefer = None
    if chosen is not None:
        prefer = chosen.__contains__
    elif cache is not None and cache.enabled and sampling.prefer_cached_images and (sampling.max_images_per_dataset or sampling.dataset_max_images):
        from .features import ImageRef

        def prefer(path: str) -> bool:
            try:
                return cache.contains(ImageRef(path))
            except (OSError, ValueError):
                return False

    train = load_examples(data, sampling.train_split, sampling.datasets, sampling.max_images_per_dataset, config.seed, prefer,
                          sampling.dataset_max_images)
    if sampling.perspective_weights.get("box_seg", 0) > 0 and not any(e.perspective == "box_seg" for e in train):
        train = train + box_seg_variants(train)
    train = cap_per_key(train, lambda e: e.dataset, sampling.max_samples_per_dataset, config.seed)
    train = cap_per_key(train, lambda e: e.perspective, sampling.max_samples_per_perspective, config.seed)
    val: list[Example] = []
    if sampling.val_samples > 0 and config.eval_every:
        val = load_examples(data, sampling.val_split, sampling.datasets, sampling.max_images_per_dataset, config.seed,
                            dataset_max_images=sampling.dataset_max_images)
        val = validation_subset([e for e in val if e.answer is not None], sampling.val_samples, config.seed)
    if not train:
        raise TrainingError(f"no training samples in {data} (split {sampling.train_split!r}, datasets {sampling.datasets})")
    return train, val


def validation_subset(examples: list[Example], count: int, seed: int) -> list[Example]:
    """About ``count`` samples on as few images as possible, one dataset after another
    (every sample of a chosen image: validation costs few encodes)."""
    def digest(text: str) -> str:
        return hashlib.sha256(f"{seed}/{text}".encode()).hexdigest()

    by_image: dict[str, list[Example]] = {}
    for example in examples:
        by_image.setdefault(example.image, []).append(example)
    by_dataset: dict[str, list[str]] = {}
    for image, members in by_image.items():
        by_dataset.setdefault(members[0].dataset, []).append(image)
    queues = [sorted(images, key=digest) for _, images in sorted(by_dataset.items())]
    chosen: list[Example] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.extend(sorted(by_image[queue.pop(0)], key=lambda e: e.id))
    return chosen


# ----- checks and logs -----------------------------------------------------------------------


def check_finite(output, step: int, sample_ids: list[str]) -> None:
    values = {name: getattr(output, name, None) for name in LOSS_TERMS}
    values["loss"] = output.loss
    for name in (*LOSS_TERMS, "loss"):
        value = values[name]
        if value is not None and not bool(torch.isfinite(value.detach()).all()):
            shown = ", ".join(f"{n} {float(v.detach()):.4g}" for n, v in values.items() if v is not None)
            raise TrainingDiverged(
                f"training stopped at step {step}: {name} is {float(value.detach())} ({shown}). "
                f"Samples of this batch: {', '.join(sample_ids[:8])}. Lower optimizer.lr, check these samples, "
                "or resume from the last checkpoint.",
                step, name,
            )


class JsonlLog:
    """``training_log.jsonl``: one JSON object per line; a resumed run drops the steps it redoes."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _config_digest(config: TrainConfig) -> str:
    data = config.to_dict()
    for key in ("steps", "epochs", "resume", "debug", "source", "eval_every", "save_every", "keep_checkpoints", "num_workers"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume in (False, "false", "no", "none", None):
        return None
    if config.resume not in (True, "auto", "true"):
        path = config.path(str(config.resume))
        if not (path / STATE_FILE).is_file():
            raise TrainingError(f"resume checkpoint {path} is not a complete training checkpoint ({STATE_FILE} is missing)")
        return path
    folder = config.output_path / CHECKPOINTS
    complete = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return complete[-1] if complete else None


# ----- validation ----------------------------------------------------------------------------


@torch.no_grad()
def validation_metrics(model, builder: BatchBuilder, batch_size: int, device, dtype) -> dict:
    """Teacher-forced losses and mask Dice (logits > 0 vs the reference, on the decoder's canvas)."""
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    dice_sum, dice_count = 0.0, 0
    examples = builder.examples
    for start in range(0, len(examples), batch_size):
        batch = builder.build([(e, "") for e in examples[start : start + batch_size]])
        batch.pop("sample_ids"), batch.pop("perspectives")
        batch = move_batch(batch, device, dtype)
        output = model(**batch)
        for name in ("loss", *LOSS_TERMS):
            value = getattr(output, name)
            if value is not None:
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] = counts.get(name, 0) + 1
        if output.mask_logits is not None and output.mask_logits.shape[0]:
            predicted = (output.mask_logits.float() > 0).flatten(1)
            target = batch["target_masks"].float().flatten(1) > 0.5
            overlap = (predicted & target).sum(1).float()
            total = predicted.sum(1).float() + target.sum(1).float()
            dice = torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
            dice_sum += float(dice.sum())
            dice_count += int(dice.numel())
    model.train()
    metrics = {f"val_{name}": sums[name] / counts[name] for name in sums}
    if dice_count:
        metrics["val_mask_dice"] = dice_sum / dice_count
    metrics["val_samples"] = len(examples)
    return metrics


# ----- the loop ------------------------------------------------------------------------------


def _identity(batch):
    return batch


def train(config: TrainConfig, progress: bool = True, log: Callable[[str], None] | None = print) -> TrainResult:
    """Run (or resume) the training ``config`` describes; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        DistributedType,
        set_seed,
    )
    from transformers import get_scheduler

    from ..modeling import save_mimo

    config.validate()
    if config.cpu_threads is not None:
        torch.set_num_threads(config.cpu_threads)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=config.cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    say = (log if main and log is not None else (lambda message: None))
    output_dir = config.output_path
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)

    started = time.perf_counter()
    model, processor = build_model(config)
    configure_parts(model, config)
    model.to(accelerator.device)
    say(f"model: {model.config.preset}, {sum(p.numel() for p in trainable_parameters(model)) / 1e6:.2f} M trainable parameters "
        f"on {accelerator.device} ({accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''})")

    cache = FeatureCache(model, processor, config.cache_path, getattr(torch, config.features.dtype), enabled=config.features.cache)
    # The main process chooses the training images (cached ones first under the cap) and writes
    # them down; the other processes, and a resumed run, take the same ones.
    selection = output_dir / SELECTION_FILE
    resuming = find_resume_checkpoint(config) is not None
    if main and not resuming:
        train_examples, val_examples = training_examples(config, cache)
        selection.write_text(json.dumps(sorted({e.image for e in train_examples}), indent=0))
    accelerator.wait_for_everyone()
    if not main or resuming:
        chosen = set(json.loads(selection.read_text())) if selection.is_file() else None
        train_examples, val_examples = training_examples(config, cache, chosen)
    for name in ("dataset_weights", "dataset_max_images"):
        unknown = sorted(set(getattr(config.sampling, name)) - {e.dataset for e in train_examples})
        if unknown:
            raise ConfigError(f"sampling.{name} names datasets with no training samples: {', '.join(unknown)}")
    builder = BatchBuilder(train_examples, processor, cache, config.batch_size, config.sampling.perspective_weights, config.augment,
                           config.seed, accelerator.process_index, config.sampling.dataset_balance,
                           config.sampling.dataset_weights)
    val_builder = BatchBuilder(val_examples, processor, cache, config.batch_size, None, None, config.seed) if val_examples else None
    say(f"samples: {len(train_examples)} train ({_count(train_examples, 'perspective')}), {len(val_examples)} val; "
        f"{len({e.image for e in train_examples})} train images from {len({e.dataset for e in train_examples})} datasets")

    refs = builder.image_refs() | ({image_ref(e) for e in val_examples})
    encode_stats = cache.encode_missing(refs, progress=progress and main, rank=accelerator.process_index,
                                        world_size=accelerator.num_processes, log=say)
    accelerator.wait_for_everyone()

    per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * len(train_examples) / per_step))
    warmup = min(config.text_warmup_steps, total)
    params = trainable_parameters(model)
    if not params:
        raise TrainingError("nothing to train: every part is frozen (see the 'train' section)")
    opt = config.optimizer
    optimizer = torch.optim.AdamW(parameter_groups(model, opt), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    scheduler = get_scheduler(config.schedule.name, optimizer, num_warmup_steps=config.schedule.warmup_steps, num_training_steps=total)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # no DataLoader is prepared: say the batch size
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    plain = accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP)

    def save_hook(models, weights, directory):  # trained parts only, as a MIMO checkpoint
        if plain and weights:
            if main:
                save_mimo(accelerator.unwrap_model(models[0]), processor, Path(directory) / "model")
            weights.clear()

    def load_hook(models, directory):
        if plain and models:
            load_trained_weights(accelerator.unwrap_model(models[0]), Path(directory) / "model")
            models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    start_step = 0
    resume_from = find_resume_checkpoint(config)
    if resume_from is not None:
        state = json.loads((resume_from / STATE_FILE).read_text())
        if state.get("config_sha256") != _config_digest(config):
            say(f"warning: {resume_from} was written with a different configuration; continuing anyway")
        accelerator.load_state(str(resume_from))
        start_step = int(state["step"])
        say(f"resumed from {resume_from} at step {start_step} (lr {scheduler.get_last_lr()[0]:.3g})")
    journal = JsonlLog(output_dir / LOG_FILE, main, start_step if resume_from is not None else None)
    journal.write({
        "event": "resume" if resume_from is not None else "start", "step": start_step, "time": _now(), "total_steps": total,
        "text_warmup_steps": warmup, "train_samples": len(train_examples), "val_samples": len(val_examples),
        "processes": accelerator.num_processes, "device": str(accelerator.device), "encode": encode_stats,
        "config": config.to_dict() if resume_from is None else None,
    })

    unwrapped = accelerator.unwrap_model(model)
    device, dtype = unwrapped.device, unwrapped.dtype
    accumulation = config.gradient_accumulation_steps
    batches = _batch_iterator(builder, config, start_step * accumulation, total * accumulation, warmup * accumulation)
    history: list[dict] = []
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
    if val_builder is not None and config.eval_every and start_step == 0:
        if main:
            metrics = validation_metrics(unwrapped, val_builder, config.batch_size, device, dtype)
            journal.write({"event": "eval", "step": 0, **metrics, "time": _now()})
        accelerator.wait_for_everyone()
    model.train()
    interrupted = False
    for step in range(start_step, total):
        tick = time.perf_counter()
        text_only = step < warmup
        losses: dict[str, float] = {}
        perspectives: dict[str, int] = {}
        grad_norm = None
        for _ in range(accumulation):
            batch = next(batches)
            sample_ids = batch.pop("sample_ids")
            for name, count in batch.pop("perspectives").items():
                perspectives[name] = perspectives.get(name, 0) + count
            batch = move_batch(batch, device, dtype)
            if config.debug.inject_nan_at_step is not None and step + 1 == config.debug.inject_nan_at_step:
                batch = _poisoned(batch)
            with accelerator.accumulate(model):
                output = model(**batch)
                try:
                    _check_everywhere(accelerator, output, step + 1, sample_ids)
                except TrainingDiverged as error:
                    journal.write({"event": "diverged", "step": step + 1, "term": error.term, "message": str(error), "time": _now()})
                    if bar is not None:
                        bar.close()
                    raise
                loss = output.loss
                if not loss.requires_grad:
                    # Nothing trainable produced this loss (a frozen language model and a batch
                    # without masks): a zero that touches every trainable parameter keeps the
                    # backward pass, and the processes of a distributed run, in step.
                    loss = loss + sum(p.sum() for p in params) * 0.0
                accelerator.backward(loss)
                if accelerator.sync_gradients and opt.max_grad_norm is not None:
                    norm = accelerator.clip_grad_norm_(params, opt.max_grad_norm)  # None under DeepSpeed (it clips itself)
                    grad_norm = None if norm is None else float(norm)
                    if grad_norm is not None and not math.isfinite(grad_norm):
                        message = (f"training stopped at step {step + 1}: the gradient norm is {grad_norm} although the losses are finite. "
                                   "Lower optimizer.lr or resume from the last checkpoint.")
                        journal.write({"event": "diverged", "step": step + 1, "term": "grad_norm", "message": message, "time": _now()})
                        raise TrainingDiverged(message, step + 1, "grad_norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name in ("loss", *LOSS_TERMS):
                value = getattr(output, name, None)
                if value is not None:
                    losses[name] = losses.get(name, 0.0) + float(value.detach()) / accumulation
        learning_rates = scheduler.get_last_lr()
        learning_rate = learning_rates[0]
        scheduler.step()
        done = step + 1
        record = {"event": "step", "step": done, "lr": learning_rate, **losses,
                  **({"part_lr": {g["name"]: lr for g, lr in zip(optimizer.param_groups[1:], learning_rates[1:])}} if len(learning_rates) > 1 else {}), "grad_norm": grad_norm, "text_only": text_only,
                  "perspectives": perspectives, "seconds": time.perf_counter() - tick}
        history.append(record)
        if done % config.log_every == 0 or done == total:
            journal.write(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4f}", lr=f"{learning_rate:.2e}")
        if val_builder is not None and config.eval_every and (done % config.eval_every == 0 or done == total):
            if main:
                metrics = validation_metrics(unwrapped, val_builder, config.batch_size, device, dtype)
                journal.write({"event": "eval", "step": done, **metrics, "time": _now()})
                say(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            accelerator.wait_for_everyone()
        stop_now = config.debug.stop_after_steps is not None and done >= config.debug.stop_after_steps
        if (config.save_every and done % config.save_every == 0 and done < total) or (stop_now and done < total):
            _save_checkpoint(accelerator, config, done, journal)
        if stop_now and done < total:
            interrupted = True
            break
    if bar is not None:
        bar.close()

    final = None
    if not interrupted:
        final = output_dir / FINAL
        accelerator.wait_for_everyone()
        if not plain:  # gather sharded weights into the unwrapped model before writing
            state = accelerator.get_state_dict(model)
            if main:
                unwrapped.load_state_dict(state, strict=False)
        if main:
            unwrapped.config.model_card = _model_card(unwrapped.config.model_card, config, train_examples, total)
            if final.exists():
                shutil.rmtree(final)
            save_mimo(unwrapped, processor, final)
            seconds = [r["seconds"] for r in history if not r["text_only"]]
            journal.write({"event": "end", "step": total, "final_checkpoint": str(final), "time": _now(),
                           "wall_seconds": time.perf_counter() - started,
                           "mean_step_seconds": sum(seconds) / len(seconds) if seconds else None})
            say(f"wrote {final}")
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, final, history[-1]["step"] if history else start_step, output_dir / LOG_FILE, history,
                       encode_stats, interrupted)


def _batch_iterator(builder: BatchBuilder, config: TrainConfig, start: int, stop: int, text_only_before: int):
    if config.num_workers <= 0:
        return (builder.batch(index, text_only=index < text_only_before) for index in range(start, stop))
    loader = torch.utils.data.DataLoader(StepBatches(builder, start, stop, text_only_before), batch_size=None,
                                         num_workers=config.num_workers, collate_fn=_identity)
    return iter(loader)


def _poisoned(batch: dict) -> dict:
    """Test hook: NaN image features (``debug.inject_nan_at_step``)."""
    from ..modeling import ImageFeatures

    batch = dict(batch)
    if "image_features" in batch:
        features = batch["image_features"]
        batch["image_features"] = ImageFeatures(features.grounding * float("nan"), features.understanding * float("nan"), features.pixels)
    else:
        batch["grounding_pixel_values"] = batch["grounding_pixel_values"] * float("nan")
    return batch


def _check_everywhere(accelerator, output, step: int, sample_ids: list[str]) -> None:
    """Every process stops when any process sees a non-finite loss."""
    try:
        check_finite(output, step, sample_ids)
        bad = None
    except TrainingDiverged as error:
        bad = error
    if accelerator.num_processes > 1:
        flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
        if float(accelerator.reduce(flag, "sum")) > 0 and bad is None:
            raise TrainingDiverged(f"training stopped at step {step}: another process saw a non-finite loss", step, "loss")
    if bad is not None:
        raise bad


def _save_checkpoint(accelerator, config: TrainConfig, step: int, journal: JsonlLog) -> Path:
    folder = config.output_path / CHECKPOINTS / f"step-{step:08d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / STATE_FILE).write_text(json.dumps({"step": step, "config_sha256": _config_digest(config), "time": _now()}, indent=1))
        complete = sorted(p for p in folder.parent.glob("step-*") if (p / STATE_FILE).is_file())
        for old in complete[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        journal.write({"event": "checkpoint", "step": step, "path": str(folder), "time": _now()})
    accelerator.wait_for_everyone()
    return folder


def _model_card(card: dict, config: TrainConfig, examples: list[Example], steps: int) -> dict:
    card = dict(card or {})
    card["intended_use"] = "research and education only; not for clinical use"
    card["training"] = {
        "data": str(config.data_path),
        "datasets": sorted({e.dataset for e in examples}),
        "modalities": sorted({e.modality for e in examples}),
        "samples": len(examples),
        "images": len({e.image for e in examples}),
        "steps": steps,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "finished": _now(),
        "note": RESEARCH_NOTE,
    }
    return card


def _count(examples: list[Example], key: str) -> str:
    counts: dict[str, int] = {}
    for example in examples:
        counts[getattr(example, key)] = counts.get(getattr(example, key), 0) + 1
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
