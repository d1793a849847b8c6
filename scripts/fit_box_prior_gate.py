"""Fit a MIMO checkpoint's box-prior gate on held-out images, as a stacking classifier.

The gate (``mimo.modeling.box_prior``) chooses, from a mask's ``<SEG>`` prompt, between MIMO's own
mask and the pretrained box segmenter's. Trained by the mask loss on MIMO's training images it
learns to close: there MIMO's decoder has seen every mask. Like any stacked ensemble it has to
be fitted on predictions for images the experts did not train on. This script takes the data
builder's validation split (never trained on; the test split stays untouched), lets the model
answer every box-prompted "Segment the {target}." turn twice (gate shut, gate open), and fits a
logistic regression from the prompt to "the box segmenter's mask has the higher Dice", each
sample weighted by the Dice difference (a near tie teaches nothing). The fitted weights become
the gate. A model without a box prior is given one first.

    python scripts/fit_box_prior_gate.py --model MODEL --data mimoseg-open --out MODEL-gated \
        --closing-datasets totalseg_example,dcmqi_ct3slice,ivadomed_spleen_spine

Needs ../shared/data (through the data-builder folder): about 0.7 s per turn here with
``--cache-dir`` (250 turns in 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MIMOAssistant"))

from mimo.evaluation.metrics import dice, match_masks  # noqa: E402
from mimo.evaluation.predictors import MimoPredictor  # noqa: E402
from mimo.evaluation.runner import comparisons_for  # noqa: E402
from mimo.modeling import save_mimo  # noqa: E402
from mimo.modeling.pixel_decoder import masks_answering_regions  # noqa: E402
from mimo.training.samples import load_examples, read_mask  # noqa: E402

OPEN, SHUT = 30.0, -30.0


def expert_outcomes(predictor, comparisons):
    """(prompt vectors (N, C), MIMO Dice (N,), box-segmenter Dice (N,), dataset names) of the
    turns whose generated answer grounds one mask.

    The answers are generated, as in real use, not teacher-forced: the ``<SEG>`` state after
    "The polyp is outlined." is not the one after ``<p>polyp</p><SEG>``, and a gate fitted on
    the latter does not open on the former. The gate's input is read from the box prior's own
    arguments by a forward hook while the model answers."""
    model = predictor.model
    prior = model.box_prior
    prior.gate.weight.data.zero_()  # forced shut or open below, whatever it was
    captured: list[torch.Tensor] = []

    def capture(module, args, output):
        _, _, _, seg_prompts, seg_batch_index, seg_region_index, region_types, _ = args
        chosen = masks_answering_regions(seg_batch_index, seg_region_index, region_types)
        captured.extend(module.gate_inputs(seg_prompts[chosen]).float())

    hook = prior.register_forward_hook(capture)
    vectors, mimo_dice, prior_dice, datasets = [], [], [], []
    try:
        for number, comparison in enumerate(comparisons, 1):
            reference = read_mask(comparison.mask_file) > 0
            scores = []
            for bias in (SHUT, OPEN):
                captured.clear()
                prior.gate.bias.data.fill_(bias)
                prediction = predictor.predict(comparison.box)
                scores.append(dice(match_masks(prediction.masks, [reference])[0], reference))
            if len(captured) == 1:  # one grounded mask answering the box (not "not present", not two terms)
                vectors.append(captured[0])
                mimo_dice.append(scores[0])
                prior_dice.append(scores[1])
                datasets.append(comparison.box.dataset)
            if number % 20 == 0:
                print(f"{number}/{len(comparisons)} turns", flush=True)
    finally:
        hook.remove()
    if not vectors:
        raise SystemExit("no box turn was answered with exactly one mask: nothing to fit the gate on")
    return torch.stack(vectors), np.array(mimo_dice), np.array(prior_dice), datasets


def fit_logistic(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted, L2-regularised logistic regression (LBFGS); returns (w, b)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum() / weight.sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MIMO checkpoint (given a closed box prior if it has none)")
    parser.add_argument("--data", required=True, help="data-builder folder")
    parser.add_argument("--out", required=True, help="folder for the checkpoint with the fitted gate (must not exist)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-per-dataset", type=int, default=20)
    parser.add_argument("--closing-datasets", default="",
                        help="comma-separated datasets of the train split to add (CT/MR volumes: the validation split has "
                             "none). MIMO has seen them, so they can only push the gate towards MIMO's own masks")
    parser.add_argument("--cache-dir", default=None, help="feature cache of earlier runs (float16 features; faster)")
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} exists; choose a new folder")
    torch.set_num_threads(2)
    predictor = MimoPredictor(args.model, device="cpu", cache_dir=args.cache_dir)
    model, processor = predictor.model, predictor.processor
    if model.box_prior is None:
        model.add_box_prior()
    examples = load_examples(args.data, args.split, None, args.max_per_dataset, 0)
    closing = [name for name in args.closing_datasets.split(",") if name]
    if closing:
        examples += load_examples(args.data, "train", closing, args.max_per_dataset, 0)
    comparisons = comparisons_for(examples)
    if not comparisons:
        parser.error(f"no box-prompted comparisons in the {args.split} split of {args.data}")
    x, mimo_dice, prior_dice, datasets = expert_outcomes(predictor, comparisons)
    scale = x.std(dim=0).clamp_min(1e-6)
    gap = torch.tensor(prior_dice - mimo_dice, dtype=torch.float32)
    w, b = fit_logistic(x / scale, (gap > 0).float(), gap.abs() + 1e-3, args.l2)
    with torch.no_grad():
        model.box_prior.gate.weight.copy_((w / scale)[None])
        model.box_prior.gate.bias.copy_(b)
        gates = torch.sigmoid(x @ (w / scale) + b).numpy()
    summary = {}
    for name in sorted(set(datasets)):
        rows = [i for i, d in enumerate(datasets) if d == name]
        summary[name] = {
            "n": len(rows),
            "mimo_dice": round(float(mimo_dice[rows].mean()), 3),
            "box_segmenter_dice": round(float(prior_dice[rows].mean()), 3),
            "mean_gate": round(float(gates[rows].mean()), 3),
        }
    print(json.dumps(summary, indent=1))
    save_mimo(model, processor, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
