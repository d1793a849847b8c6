"""The request reader: what the user wants, and which structures they named, in their own words.

Two small heads on the frozen pretrained sentence encoder (:mod:`.sentence_encoder`):

* an **intent** head on the sentence vector: ``segment``, ``presence`` (yes/no only),
  ``identify`` (what is the marked region), ``modality``, ``other``
  (:data:`mimo.training.request_grammar.INTENTS`);
* a **target tagger** on each word piece (its state beside the sentence vector), B/I/O: the
  character spans of the structure names, whatever the words around them.

Trained on the compositional request grammar (:mod:`mimo.training.request_grammar`), evaluated
on phrasings written separately (:mod:`mimo.evaluation.heldout_phrasings`).

Each name found is then **resolved** against the vocabulary the MIMO model was trained on
(:class:`ConceptVocabulary`): the same name, a terminology synonym or laterality form ("gall
bladder" -> "gallbladder"), or, for a name the terminology table does not know as a concept of
its own, one the sentence encoder places next to a known name (cosine similarity at least
``similarity_threshold``: "lung fields" -> "lungs") or a near spelling ("plyp" -> "polyp"),
provided both say the same side, level and number and the typed name does not merely add words
to the known one ("kidney stone" is not the kidney). A name made of modifiers in front of a known
name of the same side and level is a kind of it ("colorectal polyp" -> "polyp"), grounded as the
known one. A tagged name that resolves to nothing is tried again as the phrase around it (the
tagger may stop at a word it has not seen: "breast" of "breast lump"). Sentence similarity alone would swap
distinct structures (measured: "large intestine" -> "small intestine" 0.85, "right renal
artery" -> "right kidney" 0.80, above "lung fields" -> "lungs" 0.73), hence those rules, and the
answer says how it read such a name. A name that resolves to nothing stays the user's own term:
the answer never swaps it for a different class.

Saved beside a MIMO checkpoint as ``request_reader.json`` and ``request_reader.safetensors``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from .sentence_encoder import EncodedText, SentenceEncoder, shared_sentence_encoder

READER_CONFIG = "request_reader.json"
READER_WEIGHTS = "request_reader.safetensors"
READER_FORMAT_VERSION = 1
TAGS = ("O", "B", "I")


@dataclass
class ReaderConfig:
    intents: tuple[str, ...]
    vocabulary: tuple[str, ...]
    """The target names the MIMO model was trained on."""
    hidden_size: int = 384
    head_size: int = 256
    similarity_threshold: float = 0.7
    spelling_threshold: float = 0.85
    target_placeholder: str | None = None
    """The word that stands in for each found name in a second reading of the intent (None: as
    typed only), averaged with the reading as typed when every name is a trained one and used
    alone otherwise, so that the intent does not hang on names the heads never saw."""
    training: dict = field(default_factory=dict)
    """How the heads were trained and what they scored (recorded, not read)."""

    def to_dict(self) -> dict:
        return {"format": "mimo-request-reader", "format_version": READER_FORMAT_VERSION, "intents": list(self.intents),
                "vocabulary": list(self.vocabulary), "hidden_size": self.hidden_size, "head_size": self.head_size,
                "similarity_threshold": self.similarity_threshold, "spelling_threshold": self.spelling_threshold,
                "target_placeholder": self.target_placeholder, "training": self.training}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> ReaderConfig:
        if data.get("format") != "mimo-request-reader" or data.get("format_version") != READER_FORMAT_VERSION:
            raise BackendError(f"{where} is not a MIMO request reader configuration of version {READER_FORMAT_VERSION}")
        try:
            config = cls(tuple(data["intents"]), tuple(data["vocabulary"]), int(data["hidden_size"]), int(data["head_size"]),
                         float(data["similarity_threshold"]), float(data["spelling_threshold"]), data.get("target_placeholder"),
                         dict(data.get("training", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise BackendError(f"{where}: malformed request reader configuration ({error})") from error
        if not config.intents or not config.vocabulary:
            raise BackendError(f"{where}: the request reader needs intents and a vocabulary")
        return config


@dataclass(frozen=True)
class Resolution:
    """A structure name as the user typed it and the model's concept it stands for (None: unknown)."""

    typed: str
    concept: str | None
    how: str  # "same", "terminology", "broader", "similar", "spelling" or "unknown"
    score: float = 1.0


@dataclass
class ReadRequest:
    intent: str
    intent_probability: float
    targets: list[Resolution]


def normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


_DISCRIMINATORS = frozenset(
    "left right bilateral upper lower middle superior inferior anterior posterior medial lateral proximal distal "
    "cervical thoracic lumbar sacral large small major minor internal external common".split())


def discriminators(name: str) -> frozenset[str]:
    """The words of a name that tell structures of one kind apart: side, level, size, numbers."""
    return frozenset(w for w in normalise(name).split() if w in _DISCRIMINATORS or re.fullmatch(r"[a-z]?\d+", w))


def may_stand_for(typed: str, known: str) -> bool:
    """Can the unknown name ``typed`` mean the known name ``known``? Not when they differ in side,
    level or number, nor when ``typed`` only adds words to ``known`` (a part or lesion of it)."""
    typed_words, known_words = set(normalise(typed).split()), set(normalise(known).split())
    return discriminators(typed) == discriminators(known) and not known_words < typed_words


_EDGE_FILLERS = frozenset(
    "the a an this that these those my your any all some whole entire image picture slice scan view please pls plz in on of "
    "for me here there visible shown seen area region part now again too also".split())


def trim_fillers(name: str) -> str:
    """A tagged name without the filler words a tagger may take in at its edges ("the polyp in
    this image" -> "polyp"); words inside the name stay ("kidney stone" is not "kidney")."""
    words = normalise(name).split()
    while words and words[0] in _EDGE_FILLERS:
        words.pop(0)
    while words and words[-1] in _EDGE_FILLERS:
        words.pop()
    # "the polyp in this image": cut at a trailing "in/on <fillers>" phrase.
    return re.sub(r"\s+(in|on|within|inside)(\s+(" + "|".join(sorted(_EDGE_FILLERS)) + r"))+$", "", " ".join(words))


class ConceptVocabulary:
    """The model's target names, reachable by terminology synonyms, meaning and spelling."""

    def __init__(self, names: tuple[str, ...], encoder: SentenceEncoder, similarity_threshold: float, spelling_threshold: float) -> None:
        from ..terminology import Terminology

        self.names = tuple(names)
        self.by_key = {normalise(n): n for n in self.names}
        self.terminology = Terminology.default()
        self.encoder = encoder
        self.similarity_threshold = similarity_threshold
        self.spelling_threshold = spelling_threshold
        self._name_vectors: torch.Tensor | None = None
        self._coded: list[tuple[str, object]] | None = None

    def _coded_names(self) -> list[tuple[str, object]]:
        """(name, terminology entry) of every vocabulary name the terminology knows."""
        if self._coded is None:
            self._coded = [(name, entry) for name in self.names if (entry := self.terminology.find(name)) is not None]
        return self._coded

    def _vectors(self) -> torch.Tensor:
        if self._name_vectors is None:  # lazily: 170 names take about 1 s to embed on two cores
            self._name_vectors = self.encoder.embed(list(self.names))
        return self._name_vectors

    def is_name(self, phrase: str) -> bool:
        key = normalise(phrase)
        return key in self.by_key or self.terminology.find(key) is not None

    def widen(self, text: str, span: tuple[int, int], most_words: int = 3) -> tuple[int, int]:
        """The longest known name that contains the tagged span and at most ``most_words`` words
        more on either side ("cell" tagged in "the cell nuclei" -> "cell nuclei"); the span as
        tagged when no longer name is known."""
        words = [(m.start(), m.end()) for m in re.finditer(r"[\w'-]+", text)]
        inside = [i for i, (a, b) in enumerate(words) if a < span[1] and b > span[0]]
        if not inside:
            return span
        first, last = inside[0], inside[-1]
        best = span
        for left in range(max(0, first - most_words), first + 1):
            for right in range(last, min(len(words), last + most_words + 1)):
                if (left, right) == (first, last):
                    continue
                start, end = words[left][0], words[right][1]
                # Not across a list's commas: "kidney, right" in "left kidney, right kidney" is no name.
                if end - start > best[1] - best[0] and not re.search(r"[,;:.?!]", text[start:end]) and self.is_name(text[start:end]):
                    best = (start, end)
        return best

    def broader(self, key: str) -> str | None:
        """The known name that is the head of ``key`` after modifiers of the same side, level and
        number ("colorectal polyp" -> "polyp", "abdominal aorta" -> "aorta"): a kind of that
        structure, so the known one's mask and code are right, only less specific. A known name
        in front of another head is not one ("kidney stone", "liver cyst")."""
        words = key.split()
        for start in range(1, len(words)):
            head = " ".join(words[start:])
            if head in self.by_key and discriminators(key) == discriminators(head):
                return self.by_key[head]
        return None

    def resolve(self, typed: str) -> Resolution:
        key = trim_fillers(typed) or normalise(typed)
        if key in self.by_key:
            return Resolution(typed, self.by_key[key], "same")
        entry = self.terminology.find(key)
        if entry is not None:
            if normalise(entry.name) in self.by_key:
                return Resolution(typed, self.by_key[normalise(entry.name)], "terminology")
            for name, known in self._coded_names():
                if entry.same_codes(known):
                    return Resolution(typed, name, "terminology")
            # A concept of its own that the model was not trained on: a kind of a known one
            # ("colonic polyp") is grounded as that one, and anything else stays unknown.
            broader = self.broader(key)
            return Resolution(typed, broader, "broader") if broader else Resolution(typed, None, "unknown")
        broader = self.broader(key)
        if broader is not None:
            return Resolution(typed, broader, "broader")
        similarities = self._vectors() @ self.encoder.embed([key])[0]
        for index in torch.argsort(similarities, descending=True).tolist()[:5]:
            if float(similarities[index]) < self.similarity_threshold:
                break
            if may_stand_for(key, self.names[index]):
                return Resolution(typed, self.names[index], "similar", float(similarities[index]))
        for close in difflib.get_close_matches(key, list(self.by_key), n=3, cutoff=self.spelling_threshold):
            if may_stand_for(key, close):
                return Resolution(typed, self.by_key[close], "spelling", difflib.SequenceMatcher(None, key, close).ratio())
        return Resolution(typed, None, "unknown", float(similarities.max()))


class RequestReader(nn.Module):
    def __init__(self, config: ReaderConfig, encoder: SentenceEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        hidden, head = config.hidden_size, config.head_size
        self.intent_head = nn.Sequential(nn.Linear(hidden, head), nn.GELU(), nn.Dropout(0.1), nn.Linear(head, len(config.intents)))
        self.tag_head = nn.Sequential(nn.Linear(2 * hidden, head), nn.GELU(), nn.Dropout(0.1), nn.Linear(head, len(TAGS)))
        self._encoder = encoder
        self._vocabulary: ConceptVocabulary | None = None

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = shared_sentence_encoder()
        return self._encoder

    @property
    def vocabulary(self) -> ConceptVocabulary:
        if self._vocabulary is None:
            config = self.config
            self._vocabulary = ConceptVocabulary(config.vocabulary, self.encoder, config.similarity_threshold, config.spelling_threshold)
        return self._vocabulary

    def forward(self, encoded: EncodedText) -> tuple[torch.Tensor, torch.Tensor]:
        """(intent logits (N, intents), tag logits (N, T, 3))."""
        sentence = encoded.sentence
        tokens = torch.cat([encoded.tokens, sentence[:, None].expand(-1, encoded.tokens.shape[1], -1)], dim=-1)
        return self.intent_head(sentence), self.tag_head(tokens)

    @torch.inference_mode()
    def read(self, text: str) -> ReadRequest:
        if not text or not text.strip():
            raise BackendError("the question is empty")
        self.eval()
        encoded = self.encoder.encode([text])
        intent_logits, tag_logits = self(encoded)
        probabilities = torch.softmax(intent_logits[0], dim=-1)
        index = int(torch.argmax(probabilities))
        spans = tagged_spans(text, tag_logits[0].argmax(-1), encoded.token_mask[0], encoded.offsets[0])
        found = self._resolve_spans(text, [self.vocabulary.widen(text, span) for span in spans])
        if not found:
            found = self._known_names_in(text)
        if self.config.target_placeholder is not None and found:
            masked = with_placeholders(text, [span for span, _ in found], self.config.target_placeholder)
            masked_probabilities = torch.softmax(self.intent_head(self.encoder.encode([masked]).sentence[0]), dim=-1)
            # The reading as typed counts only when every name is one the heads trained on verbatim.
            trained_names = all(resolution.how == "same" for _, resolution in found)
            probabilities = (probabilities + masked_probabilities) / 2 if trained_names else masked_probabilities
            index = int(torch.argmax(probabilities))
        return ReadRequest(self.config.intents[index], float(probabilities[index]), [resolution for _, resolution in found])

    def _known_names_in(self, text: str, most_words: int = 4) -> list[tuple[tuple[int, int], Resolution]]:
        """The names of the model's structures written in ``text`` (longest first, not
        overlapping), for a request where the tagger found none ("Segment the nuclei.")."""
        words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        found: list[tuple[tuple[int, int], Resolution]] = []
        taken: set[int] = set()
        for length in range(min(most_words, len(words)), 0, -1):
            for first in range(len(words) - length + 1):
                covered = set(range(first, first + length))
                if covered & taken:
                    continue
                span = (words[first][0], words[first + length - 1][1])
                phrase = text[span[0]:span[1]]
                if re.search(r"[,;:.?!]", phrase) or normalise(phrase) in _EDGE_FILLERS or not self.vocabulary.is_name(phrase):
                    continue
                resolution = self.vocabulary.resolve(phrase)
                if resolution.concept is not None:
                    found.append((span, resolution))
                    taken |= covered
        return sorted(found, key=lambda item: item[0])

    def _resolve_spans(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], Resolution]]:
        """Resolve each tagged name; one that resolves to nothing is tried again as the phrase
        around it, since a tagger trained on known names may stop at a word it has not seen
        ("breast" of "breast lump", "retina" of "vessels of the retina", "head" and "fetus" of
        "head of the fetus"). The phrase counts only when it resolves."""
        targets: list[tuple[tuple[int, int], Resolution]] = []
        index = 0
        while index < len(spans):
            span = spans[index]
            resolution = self.vocabulary.resolve(text[span[0]:span[1]])
            consumed = 1
            if resolution.concept is None:
                for phrase, used in _phrases_around(text, spans, index):
                    candidate = self.vocabulary.resolve(text[phrase[0]:phrase[1]])
                    if candidate.concept is not None:
                        span, resolution, consumed = phrase, candidate, used
                        break
            index += consumed
            # Two tagged pieces of one name widen to the same name ("colorectal" and "polyp"): once.
            if not targets or span[0] >= targets[-1][0][1]:
                targets.append((span, resolution))
        return targets

    # ----- checkpoints --------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(directory / READER_WEIGHTS))
        (directory / READER_CONFIG).write_text(json.dumps(self.config.to_dict(), indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, encoder: SentenceEncoder | None = None) -> RequestReader:
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / READER_CONFIG, directory / READER_WEIGHTS
        if not config_path.is_file() or not weights_path.is_file():
            raise BackendError(f"{directory} has no request reader ({READER_CONFIG} and {READER_WEIGHTS})")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise BackendError(f"{config_path} is not valid JSON: {error}") from error
        reader = cls(ReaderConfig.from_dict(data, str(config_path)), encoder)
        state = load_file(str(weights_path))
        expected = reader.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise BackendError(f"{weights_path} does not hold the request reader's heads as {config_path} describes them")
        reader.load_state_dict(state)
        return reader.eval()

    @staticmethod
    def is_saved_in(directory: str | Path) -> bool:
        return (Path(directory) / READER_CONFIG).is_file()


_OF_JOIN = re.compile(r"\s+of(\s+the|\s+a|\s+an)?\s+", re.IGNORECASE)
_WORD = re.compile(r"[\w'-]+")


def with_placeholders(text: str, spans: list[tuple[int, int]], placeholder: str) -> str:
    """``text`` with each span replaced by ``placeholder`` ("Segment the breast lump." -> "Segment the X.")."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + placeholder + text[end:]
    return text


def _phrases_around(text: str, spans: list[tuple[int, int]], index: int) -> list[tuple[tuple[int, int], int]]:
    """Longer phrases around ``spans[index]``, each with how many tagged spans it takes up:
    "A of the B" (with the next span, or the word before), then one or two words more on the
    right within the clause, fillers excluded."""
    start, end = spans[index]
    phrases: list[tuple[tuple[int, int], int]] = []
    if index + 1 < len(spans) and _OF_JOIN.fullmatch(text[end:spans[index + 1][0]]):
        phrases.append(((start, spans[index + 1][1]), 2))
    before = re.search(r"([\w'-]+)" + _OF_JOIN.pattern + "$", text[:start], re.IGNORECASE)
    if before and before.group(1).lower() not in _EDGE_FILLERS:
        phrases.append(((before.start(1), end), 1))
    following = []
    for match in _WORD.finditer(text, end):
        if text[end:match.start()].strip() or match.group().lower() in _EDGE_FILLERS:
            break
        following.append(match)
        end = match.end()
        if len(following) == 2:
            break
    phrases += [((start, match.end()), 1) for match in following]
    return phrases


def tagged_spans(text: str, tags: torch.Tensor, token_mask: torch.Tensor, offsets: torch.Tensor) -> list[tuple[int, int]]:
    """Character spans of B/I runs, widened to whole words and trimmed of punctuation."""
    spans: list[list[int]] = []
    previous_inside = False
    for tag, real, (start, end) in zip(tags.tolist(), token_mask.tolist(), offsets.tolist()):
        if not real:
            continue
        name = TAGS[tag]
        if name == "O":
            previous_inside = False
            continue
        continues_word = spans and start == spans[-1][1]  # a word piece of the same word
        if (name == "I" and previous_inside) or continues_word and previous_inside:
            spans[-1][1] = end
        else:
            spans.append([start, end])
        previous_inside = True
    words = []
    for start, end in spans:
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "-'"):
            start -= 1
        while end < len(text) and (text[end].isalnum() or text[end] in "-'"):
            end += 1
        piece = text[start:end].strip(" .,;:!?")
        if piece:
            start = text.index(piece, start)
            words.append((start, start + len(piece)))
    return words
