"""Tokenizers: MIMO's special tokens, and the tiny preset's tokenizer trained here on our own text.

The tiny tokenizer is a byte-level BPE (any text encodes, no unknown token) trained with the
``tokenizers`` library on the question/answer templates the project uses and on the names and
synonyms of the project's terminology (``mimo/resources/terminology.json``), so that structure
names are short token sequences. Training is deterministic and takes about a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from importlib import resources

from ..errors import BackendError
from .configuration import (
    IMAGE_TOKEN,
    MIMO_TOKENS,
    PHRASE_END_TOKEN,
    PHRASE_START_TOKEN,
    REGION_TOKEN,
    SEG_TOKEN,
)

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<s>", "</s>", "<pad>"

MODALITIES = (
    "CT", "MRI", "MR", "T1-weighted MR", "T2-weighted MR", "X-ray", "chest X-ray", "ultrasound", "breast ultrasound",
    "thyroid ultrasound", "fetal ultrasound", "endoscopy", "colonoscopy", "fundus photograph", "microscopy",
    "histopathology", "H&E slide", "electron microscopy", "dermoscopy", "PET", "mammography",
)
FINDINGS = (
    "lesion", "breast lesion", "thyroid nodule", "nodule", "polyp", "tumor", "tumour", "cyst", "mass", "fracture",
    "COVID-19 infection", "pneumonia", "effusion", "cell nuclei", "cell membranes", "retinal vessels", "fetal head",
    "benign", "malignant", "normal", "abnormal", "lungs", "infection", "calcification", "edema", "hemorrhage",
)
QUESTIONS = (
    "Segment the {term}.",
    "Where is the {term}?",
    "Show me the {term} in this {modality} image.",
    "Outline the {term}.",
    "Can you find the {term}?",
    "Is there a {term} in this image?",
    "What is in {region}?",
    "What structure is inside {region}?",
    "Segment the {term} in {region}.",
    "What does this {modality} image show?",
    "Describe the image.",
    "How large is the {term}?",
)
ANSWERS = (
    "{p}{term}{q}{seg}",
    "The {p}{term}{q}{seg} is shown.",
    "This is the {p}{term}{q}{seg}.",
    "It is a {p}{term}{q}{seg}.",
    "The region contains the {p}{term}{q}{seg}.",
    "This {modality} image shows the {p}{term}{q}{seg}.",
    "There is no {term} in this image.",
    "Yes, there is a {p}{term}{q}{seg}.",
    "No, I cannot find a {term}.",
    "The {term} looks {finding}.",
)


def terminology_names() -> list[str]:
    """Names and synonyms of every entry of the project's terminology."""
    text = resources.files("mimo").joinpath("resources", "terminology.json").read_text(encoding="utf-8")
    names = []
    for entry in json.loads(text)["entries"]:
        names.append(entry["name"])
        names.extend(entry.get("synonyms") or [])
    return names


def tiny_corpus() -> Iterator[str]:
    """The text the tiny tokenizer is trained on: every term in every template."""
    terms = list(dict.fromkeys(terminology_names() + list(FINDINGS)))
    for index, term in enumerate(terms):
        modality = MODALITIES[index % len(MODALITIES)]
        finding = FINDINGS[index % len(FINDINGS)]
        for template in QUESTIONS:
            yield template.format(term=term, modality=modality, region=REGION_TOKEN)
        for template in ANSWERS:
            yield template.format(term=term, modality=modality, finding=finding, p=PHRASE_START_TOKEN, q=PHRASE_END_TOKEN, seg=SEG_TOKEN)
        yield f"User: {QUESTIONS[index % len(QUESTIONS)].format(term=term, modality=modality, region=REGION_TOKEN)}\nAssistant:"


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 2048):
    """A byte-level BPE tokenizer with MIMO's special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *MIMO_TOKENS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts if texts is not None else tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(MIMO_TOKENS),
        clean_up_tokenization_spaces=False,
    )


def add_mimo_tokens(tokenizer) -> None:
    """Give a (pretrained LM's) tokenizer MIMO's special tokens, and a padding token if it has none."""
    missing = [token for token in MIMO_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def mimo_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the tokens the model treats specially; a clear error when the tokenizer lacks one."""
    vocabulary = tokenizer.get_vocab()
    ids = {}
    for name, token in (
        ("image", IMAGE_TOKEN),
        ("region", REGION_TOKEN),
        ("phrase_start", PHRASE_START_TOKEN),
        ("phrase_end", PHRASE_END_TOKEN),
        ("seg", SEG_TOKEN),
    ):
        if token not in vocabulary:
            raise BackendError(f"the tokenizer has no {token} token: it is not a MIMO tokenizer")
        ids[name] = vocabulary[token]
    if tokenizer.eos_token_id is None:
        raise BackendError("the tokenizer has no end-of-sequence token")
    ids["eos"] = tokenizer.eos_token_id
    ids["pad"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ids
