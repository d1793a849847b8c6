"""Fit a MIMO checkpoint's box-prior gate on held-out images, as a stacking classifier.

The gate (``mimo.modeling.box_prior``) chooses, from a mask's ``<SEG>`` prompt, between MIMO's own
mask and the pretrained box segmenter's. Trained by the mask loss on MIMO's training images it
learns to close: there MIMO's decoder has seen every mask. Like any stacked ensemble it has to
be fitted on predictions for images the experts did not train on. This script takes the data
builder's validation split (never trained on; the test split stays untouched), draws both
experts' masks for every box-prompted "Segment the {target}." turn, and fits a logistic
regression from the prompt to "the box segmenter's mask has the higher Dice", each sample
weighted by the Dice difference (a near tie teaches nothing). The fitted weights become the gate.

    python scripts/fit_box_prior_gate.py --model MODEL --data mimoseg-open --out MODEL-gated

Needs ../shared/data (through the data-builder folder) and the feature-free CPU path: about
1.5 s per validation image here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MIMOAssistant"))

from mimo.evaluation.metrics import dice  # noqa: E402
from mimo.evaluation.runner import comparisons_for  # noqa: E402
from mimo.modeling import load_mimo, save_mimo  # noqa: E402
from mimo.training.samples import load_examples, read_mask  # noqa: E402

OPEN, SHUT = 30.0, -30.0


def expert_outcomes(model, processor, comparisons):
    """(prompt vectors (N, C), MIMO Dice (N,), box-segmenter Dice (N,), dataset names)."""
    gate = model.box_prior.gate
    gate.weight.data.zero_()  # forced shut or open below, whatever it was
    vectors, mimo_dice, prior_dice, datasets = [], [], [], []
    for number, comparison in enumerate(comparisons, 1):
        example = comparison.box
        inputs = processor.preprocess_image(example.load_image())
        answer = f"<p>{comparison.target}</p><SEG>"
        answer_ids = processor.tokenizer.encode(answer, add_special_tokens=False)
        reference = read_mask(comparison.mask_file) > 0
        with torch.no_grad():
            features = model.encode_images(inputs.grounding_pixel_values, inputs.vision_pixel_values, inputs.refine_pixel_values)
            batch = processor(inputs.geometry, example.question, example.prompts, example.history, answer=answer)
            scores = []
            for bias in (SHUT, OPEN):
                gate.bias.fill_(bias)
                logits = model(**batch, image_features=features).mask_logits
                scores.append(dice(processor.to_answer(answer_ids, logits, inputs.geometry).masks[0], reference))
            embeddings = model.input_embeddings(batch["input_ids"], batch["question_mask"], batch["region_masks"],
                                                batch["region_types"], batch["region_boxes"], features)
            hidden = model.language_model(inputs_embeds=embeddings, attention_mask=batch["attention_mask"], output_hidden_states=True)
            seg = hidden.hidden_states[-1][batch["input_ids"] == model.token_ids["seg"]]
            vectors.append(model.seg_projection(seg).mean(dim=1)[0])
        mimo_dice.append(scores[0])
        prior_dice.append(scores[1])
        datasets.append(example.dataset)
        if number % 20 == 0:
            print(f"{number}/{len(comparisons)} turns", flush=True)
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
    parser.add_argument("--model", required=True, help="MIMO checkpoint with a box prior")
    parser.add_argument("--data", required=True, help="data-builder folder")
    parser.add_argument("--out", required=True, help="folder for the checkpoint with the fitted gate (must not exist)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-per-dataset", type=int, default=20)
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} exists; choose a new folder")
    torch.set_num_threads(2)
    model, processor = load_mimo(args.model)
    if model.box_prior is None:
        parser.error(f"{args.model} has no box prior (train with model.add_box_prior first)")
    comparisons = comparisons_for(load_examples(args.data, args.split, None, args.max_per_dataset, 0))
    if not comparisons:
        parser.error(f"no box-prompted comparisons in the {args.split} split of {args.data}")
    x, mimo_dice, prior_dice, datasets = expert_outcomes(model, processor, comparisons)
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
