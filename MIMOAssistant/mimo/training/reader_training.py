"""Training the request reader's heads (:mod:`mimo.modeling.request_reader`) on the request grammar.

The sentence encoder is frozen, so each generated request is encoded once and the two heads
train on the cached states in seconds. Target names come from the MIMO model's vocabulary, the
terminology table (names and synonyms: structures the model was never trained on must be found
as names too, so that they are kept rather than replaced) and a list of further medical terms.

Scored afterwards on the held-out phrasings (:mod:`mimo.evaluation.heldout_phrasings`), which
never enter training: intent accuracy and exact target-span recovery per phrasing family.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modeling.request_reader import TAGS, ReaderConfig, RequestReader, normalise, with_placeholders
from ..modeling.sentence_encoder import EncodedText, SentenceEncoder, shared_sentence_encoder
from .request_grammar import INTENTS, Request, RequestGrammar

EXTRA_NAMES = (
    "skin lesion", "melanoma", "naevus", "optic disc", "optic cup", "macula", "meniscus", "appendix", "ovary", "uterus",
    "placenta", "amniotic fluid", "carotid plaque", "gallstone", "kidney stone", "pneumothorax", "rib fracture",
    "cerebellum", "ventricles", "corpus callosum", "tonsil", "parotid gland", "lymph nodes", "tumour", "glioma",
    "mitochondria", "red blood cells", "glands", "crypts", "tooth", "mandible", "cornea", "lens", "iris",
    "knee joint", "rotator cuff", "achilles tendon", "bowel loops", "free fluid", "ascites", "hernia", "cyst wall",
)


TARGET_PLACEHOLDER = "X"


@dataclass
class ReaderTrainingResult:
    reader: RequestReader
    train_accuracy: float
    heldout: dict


def tag_targets(encoded: EncodedText, requests: list[Request]) -> torch.Tensor:
    """(N, T) tag ids from each request's character spans (padding: -100)."""
    tags = torch.full(encoded.token_mask.shape, -100, dtype=torch.long)
    for row, request in enumerate(requests):
        for column in range(encoded.token_mask.shape[1]):
            if not encoded.token_mask[row, column]:
                continue
            start, end = (int(v) for v in encoded.offsets[row, column])
            tag = 0
            for span_start, span_end in request.spans:
                if start < span_end and end > span_start:
                    tag = 1 if start <= span_start else 2
                    break
            tags[row, column] = tag
    return tags


def pseudo_names(count: int, seed: int) -> list[str]:
    """Made-up words and word pairs: the tagger must find a name by where it stands, not by
    knowing it (so that a structure it never heard of is kept as typed)."""
    rng = random.Random(f"pseudo-names/{seed}")
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"

    def word() -> str:
        return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))) + rng.choice(("", "a", "is", "oma", "al", "um"))

    return [word() if rng.random() < 0.6 else f"{word()} {word()}" for _ in range(count)]


def target_names(vocabulary: tuple[str, ...], seed: int = 0) -> list[str]:
    from ..terminology import Terminology

    names = set(vocabulary) | set(EXTRA_NAMES) | set(pseudo_names(300, seed))
    terminology = Terminology.default()
    names |= {entry.name for entry in terminology}
    return sorted(n for n in names if 2 <= len(n) <= 40)


def train_request_reader(vocabulary: tuple[str, ...], samples: int = 8000, epochs: int = 12, seed: int = 0,
                         encoder: SentenceEncoder | None = None, log=print) -> ReaderTrainingResult:
    torch.manual_seed(seed)
    encoder = encoder or shared_sentence_encoder()
    grammar = RequestGrammar(target_names(vocabulary, seed), seed=seed)
    requests = grammar.samples(samples)
    log(f"request reader: encoding {len(requests)} generated requests, as typed and with the names replaced")
    encoded = encoder.encode([r.text for r in requests])
    # The intent is learnt from each request as typed and with its names replaced by the
    # placeholder: it is read from both (the names users type are not those of training, and a
    # terse request is mostly its name: "seg polyp").
    masked = encoder.encode([with_placeholders(r.text, list(r.spans), TARGET_PLACEHOLDER) for r in requests])
    intents = torch.tensor([INTENTS.index(r.intent) for r in requests])
    tags = tag_targets(encoded, requests)
    config = ReaderConfig(INTENTS, tuple(vocabulary), hidden_size=encoder.hidden_size, target_placeholder=TARGET_PLACEHOLDER)
    reader = RequestReader(config, encoder)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=1e-2)
    order = list(range(len(requests)))
    rng = random.Random(seed)
    batch = 128
    for epoch in range(epochs):
        rng.shuffle(order)
        reader.train()
        total = 0.0
        for start in range(0, len(order), batch):
            index = torch.tensor(order[start:start + batch])
            part = EncodedText(encoded.sentence[index], encoded.tokens[index], encoded.token_mask[index], encoded.offsets[index])
            intent_logits, tag_logits = reader(part)
            masked_logits = reader.intent_head(masked.sentence[index])
            loss = (F.cross_entropy(intent_logits, intents[index]) + F.cross_entropy(masked_logits, intents[index])
                    + F.cross_entropy(tag_logits.reshape(-1, len(TAGS)), tags[index].reshape(-1), ignore_index=-100))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
        log(f"request reader: epoch {epoch + 1}/{epochs} loss {total / len(order):.4f}")
    reader.eval()
    with torch.no_grad():
        predicted = (torch.softmax(reader.intent_head(encoded.sentence), -1) + torch.softmax(reader.intent_head(masked.sentence), -1)).argmax(-1)
    accuracy = float((predicted == intents).float().mean())
    heldout = score_heldout(reader)
    reader.config.training = {"generated_requests": samples, "epochs": epochs, "seed": seed, "train_intent_accuracy": round(accuracy, 4),
                              "heldout": heldout}
    return ReaderTrainingResult(reader, accuracy, heldout)


def heldout_requests() -> list[tuple[str, str, str, str | None]]:
    """(family, text, intent, target typed) from the held-out phrasings, filled with a few targets."""
    from ..evaluation import heldout_phrasings as held

    targets = ("polyp", "breast lesion", "left kidney", "cell nuclei", "lungs", "skin lesion", "fetal head")
    rows = []
    for families, intent in ((held.SEGMENT_FAMILIES, "segment"), (held.PRESENCE_FAMILIES, "presence")):
        for family, templates in families.items():
            for i, template in enumerate(templates):
                target = targets[i % len(targets)]
                rows.append((f"{intent}/{family}", template.format(target=target, modality="CT"), intent, target))
    for family, templates in held.NAMING_FAMILIES.items():
        rows += [(f"identify/{family}", t, "identify", None) for t in templates]
    rows += [("modality", t, "modality", None) for t in held.MODALITY_QUESTIONS]
    return rows


def score_heldout(reader: RequestReader) -> dict:
    """Intent accuracy and exact target recovery per held-out family."""
    rows = heldout_requests()
    found: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for family, text, intent, target in rows:
        read = reader.read(text)
        typed = [normalise(t.typed) for t in read.targets]
        target_ok = (typed == [normalise(target)]) if target is not None else not typed
        found[family].append((read.intent == intent, target_ok))
    per_family = {family: {"n": len(v), "intent_accuracy": round(sum(a for a, _ in v) / len(v), 4),
                           "target_exact": round(sum(b for _, b in v) / len(v), 4)} for family, v in sorted(found.items())}
    every = [x for v in found.values() for x in v]
    return {"n": len(every), "intent_accuracy": round(sum(a for a, _ in every) / len(every), 4),
            "target_exact": round(sum(b for _, b in every) / len(every), 4),
            "worst_family_intent": min(per_family.items(), key=lambda kv: kv[1]["intent_accuracy"])[0],
            "families": per_family}
