"""Samples for one image: the four MIMO perspectives, text VQA and negatives.

Per image ("unit") and per *focus* target (every target of a 2D record; the structures a
volume slice was sampled for):

- ``text_seg``: "Segment the X." -> "<p>X</p><SEG>" (one per focus target, plus one multi-target
  request when the image has two or more targets);
- ``prompt_perception`` (not for diffuse targets): a simulated box / points / scribble / lasso on
  X + "What is this?" -> "This is the <p>X</p><SEG>.";
- ``reasoning_seg`` (not for diffuse targets): a knowledge question (identify by function or
  clue, function, location, what, system, appearance, significance, neighbours) answered in
  sentences whose terms are grounded only when their mask exists in this image;
- ``prompt_reasoning`` (not for diffuse targets): a prompt + a question that needs a label the
  source records (BUSI pathology, COVID-QU-Ex diagnosis) or knowledge about the marked structure;
- ``vqa`` (text only, closed): modality, plane (volumes), presence yes/no, pathology, diagnosis,
  normal or not;
- ``negative``: a segmentation request (or a knowledge question) about a structure that is
  certainly absent: no ``<SEG>``, no mask; ``absent`` names it.

Randomness comes from a generator seeded by (seed, unit id), so a unit's samples do not depend
on which other units are built or in which process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
import numpy as np

from ..prompts import prompt_to_dict
from . import templates as T
from .catalog import MODALITY_ANSWER, Domain
from .knowledge import APPEARANCE_KEYS, Entry, Knowledge, ground, plain, references
from .prompt_sim import available_kinds, simulate

PERSPECTIVES = ("text_seg", "prompt_perception", "reasoning_seg", "prompt_reasoning", "vqa", "negative")
PATHOLOGY_LABELS = ("benign", "malignant")
DIAGNOSIS_LABELS = ("COVID-19", "non-COVID pneumonia", "normal")


def unit_rng(seed: int, uid: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x1f{uid}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class Target:
    name: str
    mask_path: str  # relative to the unit's root
    mask: np.ndarray  # bool (rows, cols)


@dataclass
class Unit:
    uid: str
    dataset: str
    modality: str  # sample modality ("CT", "ultrasound", ...)
    domain: Domain
    root: str
    image: str
    shape: tuple[int, int]
    spacing_mm: tuple[float, float]
    calibrated: bool
    group: str
    split: str
    targets: dict[str, Target]  # present structures that can be grounded, in a stable order
    focus: list[str]
    #: Certainly absent structures and why: "domain" (cannot be in this kind of image), "label" (the
    #: source says the image is normal), "slice" (labelled elsewhere in the volume, not in this slice).
    absent: dict[str, str] = field(default_factory=dict)
    findings: dict = field(default_factory=dict)
    label_conflict: bool = False
    volume: dict | None = None  # {"volume", "axis", "index", "window"}
    img: str = "image"
    a_mod: str = ""  # overrides domain.a_mod (volume slices: "an axial CT slice")


def _entry(knowledge: Knowledge, name: str) -> Entry:
    entry = knowledge.get(name)
    if entry is None:  # unknown structure (should not happen: the test checks coverage); treat as a lesion
        entry = Entry(name=name, category="structure", kind="lesion", what="is the structure named " + name,
                      location="is shown in this image", clues=(), significance="is the annotated structure")
    return entry


def _join(names: list[str], refs: bool, article: str = "the ") -> str:
    """"the a, the b and the c" (``refs``: names as ``[[name]]`` references)."""
    items = [article + (f"[[{n}]]" if refs else n) for n in names]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


class Generator:
    def __init__(self, unit: Unit, knowledge: Knowledge, seed: int, dataset_lesions: set[str] | None = None) -> None:
        self.unit = unit
        self.lesions = set(dataset_lesions or ())
        self.kb = knowledge
        self.rng = unit_rng(seed, unit.uid)
        self.samples: list[dict] = []
        self.context = {
            "img": unit.img,
            "mod": unit.modality,
            "a_mod": unit.a_mod or unit.domain.a_mod,
            "a_mod_short": unit.domain.short,
            "a_mod_plural": unit.domain.plural,
            "technique": unit.domain.technique,
        }
        self.context["a_mod_cap"] = self.context["a_mod"][0].upper() + self.context["a_mod"][1:]

    # ------------------------------------------------------------ helpers
    def pick(self, options: list):
        return options[int(self.rng.integers(len(options)))]

    def values(self, entry: Entry, **extra) -> dict:
        values = dict(self.context)
        values.update(T.grammar(entry.name, entry.plural, entry.article))
        values["cat"] = entry.category
        values["this_cat"] = ("These " if entry.plural else "This ") + entry.category
        values["a_t_cap"] = values["a_t"][0].upper() + values["a_t"][1:]
        values.update(extra)
        return values

    def prompt_words(self, prompts: list) -> dict:
        kind = prompts[0].kind
        singular, plural, places, verbs = T.PROMPT_WORDS[kind]
        many = kind == "point" and sum(1 for p in prompts if p.positive) > 1
        noun = plural if many else singular
        place = self.pick(places)
        if kind == "point" and many:
            place = place.replace("point I clicked", "points I clicked").replace("marked point", "marked points")
        return {"pnoun": noun, "in_prompt": place, "marked": self.pick(verbs)}

    def add(self, perspective: str, qtype: str, question: str, answer: str, *, prompts=(), answer_type="open",
            closed=None, absent=()) -> None:
        grounded: list[str] = []
        text = ground(answer, self.unit.targets, grounded)
        if "[[" in text or "[[" in question:
            raise AssertionError(f"unrendered reference in {question!r} / {text!r}")
        unit = self.unit
        sample = {
            "id": f"{unit.uid}#{len(self.samples):02d}",
            "image": unit.image,
            "root": unit.root,
            "spacing_mm": [round(float(unit.spacing_mm[0]), 6), round(float(unit.spacing_mm[1]), 6)],
            "calibrated": unit.calibrated,
            "size": [int(unit.shape[0]), int(unit.shape[1])],
            "modality": unit.modality,
            "dataset": unit.dataset,
            "group": unit.group,
            "split": unit.split,
            "perspective": perspective,
            "question_type": qtype,
            "prompts": [prompt_to_dict(p) for p in prompts],
            "conversation": [{"role": "user", "text": question}, {"role": "assistant", "text": text}],
            "masks": [unit.targets[name].mask_path for name in grounded],
            "targets": grounded,
            "absent": list(absent),
            "answer_type": answer_type,
            "closed_answer": closed,
        }
        if unit.volume:
            sample["volume"] = dict(unit.volume)
        if unit.findings:
            sample["findings"] = dict(unit.findings)
        self.samples.append(sample)

    # ------------------------------------------------------------ perspectives
    def text_seg(self, name: str) -> None:
        entry = _entry(self.kb, name)
        values = self.values(entry)
        question = T.fill(self.pick(T.TEXT_SEG_Q), values)
        answer = T.fill(self.pick(T.TEXT_SEG_A), values)
        self.add("text_seg", "segment", question, answer)

    def text_seg_multi(self, names: list[str]) -> None:
        values = dict(self.context, list=_join(names, False), seg_list=_join(names, True), seg_bare=_join(names, True, ""))
        question = T.fill(self.pick(T.TEXT_SEG_MULTI_Q), values)
        answer = T.fill(self.pick(T.TEXT_SEG_MULTI_A), values)
        self.add("text_seg", "segment_multi", question, answer)

    def simulate_prompt(self, name: str) -> list:
        mask = self.unit.targets[name].mask
        kinds = available_kinds(mask)
        return simulate(mask, self.pick(list(kinds)), self.rng)

    def perception(self, name: str) -> None:
        entry = _entry(self.kb, name)
        prompts = self.simulate_prompt(name)
        values = self.values(entry, **self.prompt_words(prompts))
        question = T.fill(self.pick(T.PERCEPTION_Q), values)
        answer = T.fill(self.pick(T.PERCEPTION_A), values)
        self.add("prompt_perception", "identify", question, answer, prompts=prompts)

    def unique_clues(self, entry: Entry) -> list[str]:
        """Clues of ``entry`` that no other structure present in the image shares."""
        taken = set()
        for name in self.unit.targets:
            if name != entry.name:
                taken.update(plain(c) for c in _entry(self.kb, name).clues)
        return [c for c in entry.clues if plain(c) not in taken]

    def _neighbours(self, entry: Entry) -> list[str]:
        return [n for n in entry.adjacent if n in self.unit.targets and n != entry.name]

    def reasoning_types(self, entry: Entry) -> list[tuple[str, int]]:
        options = []
        if self.unique_clues(entry):
            options.append(("clue", 3))
        for kind in ("function", "location", "what", "significance"):
            if entry.fact(kind):
                options.append((kind, 1))
        if entry.system:
            options.append(("system", 1))
        if entry.part_of and entry.kind == "anatomy":
            options.append(("part_of", 1))
        if APPEARANCE_KEYS.get(self.unit.modality) in entry.appearance:
            options.append(("appearance", 1))
        if self._neighbours(entry):
            options.append(("adjacent", 2))
        return options

    def reasoning(self, name: str) -> None:
        entry = _entry(self.kb, name)
        options = self.reasoning_types(entry)
        if not options:
            return
        weights = np.array([w for _, w in options], dtype=float)
        qtype = options[int(self.rng.choice(len(options), p=weights / weights.sum()))][0]
        values = self.values(entry, t=entry.name)
        if qtype == "clue":
            clue = self.pick(self.unique_clues(entry))
            values["clue"] = plain(clue)
            question = T.fill(self.pick(T.REASONING_Q["clue"]), values)
            values["clue"] = clue
            answer = T.fill(self.pick(T.REASONING_A["clue"]), values)
            head = plain(clue).split()[:2]
            follow = [f for f in (entry.function, entry.significance, entry.what) if f and plain(f).split()[:2] != head]
            if follow and self.rng.random() < 0.6:
                answer += " " + T.fill(self.pick(T.FOLLOW_UP), dict(values, pred=follow[0]))
        elif qtype == "adjacent":
            neighbours = self._neighbours(entry)
            question = T.fill(self.pick(T.REASONING_Q["adjacent"]), values)
            answer = T.fill(self.pick(T.REASONING_A["adjacent"]), dict(values, neighbors=_join(neighbours, True)))
        elif qtype == "system":
            question = T.fill(self.pick(T.REASONING_Q["system"]), values)
            answer = T.fill(self.pick(T.REASONING_A["system"]), dict(values, system=entry.system))
        elif qtype == "part_of":
            whole = entry.part_of
            bare = whole[4:] if whole.startswith("the ") else whole
            if bare in self.unit.targets and bare != entry.name:  # ground the whole when its mask is here
                whole = "the [[" + bare + "]]"
            question = T.fill(self.pick(T.REASONING_Q["part_of"]), values)
            answer = T.fill(self.pick(T.REASONING_A["part_of"]), dict(values, part_of=whole))
        elif qtype == "appearance":
            key = APPEARANCE_KEYS[self.unit.modality]
            question = T.fill(self.pick(T.REASONING_Q["appearance"]), values)
            answer = T.fill(self.pick(T.REASONING_A["appearance"]), dict(values, pred=entry.appearance[key]))
        else:
            question = T.fill(self.pick(T.REASONING_Q[qtype]), values)
            answer = T.fill(self.pick(T.REASONING_A["generic"]), dict(values, pred=entry.fact(qtype)))
        self.add("reasoning_seg", qtype, question, answer)

    def prompt_reasoning_label(self, name: str) -> bool:
        """A prompt + a question whose answer is a label the source records. False if none applies."""
        unit = self.unit
        entry = _entry(self.kb, name)
        if unit.label_conflict:
            return False
        pathology = unit.findings.get("pathology")
        diagnosis = unit.findings.get("diagnosis")
        if entry.is_lesion and pathology in PATHOLOGY_LABELS:
            prompts = self.simulate_prompt(name)
            values = self.values(entry, **self.prompt_words(prompts), label=pathology, Label=pathology.capitalize())
            question = T.fill(self.pick(T.PROMPT_REASONING_Q["pathology"]), values)
            answer = T.fill(self.pick(T.PATHOLOGY_A), values)
            self.add("prompt_reasoning", "pathology", question, answer, prompts=prompts, answer_type="closed", closed=pathology)
            return True
        applies = self.kb.findings.get("diagnosis", {}).get("applies_to", [])
        if diagnosis in DIAGNOSIS_LABELS and name in applies:
            if name == "COVID-19 infection" and diagnosis != "COVID-19":
                return False
            prompts = self.simulate_prompt(name)
            values = self.values(entry, **self.prompt_words(prompts))
            question = T.fill(self.pick(T.PROMPT_REASONING_Q["diagnosis"]), values)
            answer = T.fill(self.pick(T.DIAGNOSIS_A[diagnosis]), values)
            self.add("prompt_reasoning", "diagnosis", question, answer, prompts=prompts, answer_type="closed", closed=diagnosis.lower())
            return True
        return False

    def prompt_reasoning_knowledge(self, name: str) -> None:
        entry = _entry(self.kb, name)
        kinds = [k for k in ("function", "location", "what", "significance") if entry.fact(k)]
        if entry.system:
            kinds.append("system")
        if not kinds:
            return
        qtype = self.pick(kinds)
        prompts = self.simulate_prompt(name)
        values = self.values(entry, **self.prompt_words(prompts))
        question = T.fill(self.pick(T.PROMPT_REASONING_Q[qtype]), values)
        answer = T.fill(self.pick(T.PROMPT_IDENTIFY), values)
        if qtype == "system":
            fact = T.fill(self.pick(T.PROMPT_FACT["system"]), dict(values, system=entry.system))
        elif qtype == "what":  # "This organ is a bean-shaped organ" would repeat the noun
            fact = T.fill(T.PROMPT_FACT["generic"][0], dict(values, pred=entry.fact(qtype)))
        else:
            fact = T.fill(self.pick(T.PROMPT_FACT["generic"]), dict(values, pred=entry.fact(qtype)))
        self.add("prompt_reasoning", qtype, question, answer + " " + fact, prompts=prompts)

    # ------------------------------------------------------------ VQA
    def vqa_modality(self) -> None:
        if self.rng.random() < 0.7:
            question, answer = self.pick(T.MODALITY_Q), T.fill(self.pick(T.MODALITY_A), self.context)
        else:
            question, answer = self.pick(T.TECHNIQUE_Q), T.fill(self.pick(T.TECHNIQUE_A), self.context)
        self.add("vqa", "modality", question, answer, answer_type="closed", closed=MODALITY_ANSWER.get(self.unit.modality, "other"))

    def vqa_plane(self) -> None:
        plane = self.unit.volume["axis"]
        values = dict(self.context, plane=plane, an_plane=("an " if plane[0] in "aeiou" else "a ") + plane)
        self.add("vqa", "plane", self.pick(T.PLANE_Q), T.fill(self.pick(T.PLANE_A), values), answer_type="closed", closed=plane)

    def _presence_group(self, entry: Entry) -> str:
        return "anatomy" if entry.kind == "anatomy" else "lesion"

    def vqa_presence(self, name: str, present: bool) -> None:
        entry = _entry(self.kb, name)
        group = self._presence_group(entry)
        values = self.values(entry)
        question = T.fill(self.pick(T.PRESENCE_Q[group]), values)
        answer = T.fill(self.pick((T.PRESENCE_YES if present else T.PRESENCE_NO)[group]), values)
        self.add("vqa", "presence", question, answer, answer_type="closed", closed="yes" if present else "no",
                 absent=() if present else (name,))

    def vqa_findings(self) -> None:
        unit = self.unit
        if unit.label_conflict:
            return
        pathology = unit.findings.get("pathology")
        if pathology in PATHOLOGY_LABELS:
            lesions = [n for n in unit.targets if _entry(self.kb, n).is_lesion]
            if lesions:
                entry = _entry(self.kb, lesions[0])
                values = self.values(entry, label=pathology, Label=pathology.capitalize())
                self.add("vqa", "pathology", T.fill(self.pick(T.PATHOLOGY_Q), values), T.fill(self.pick(T.PATHOLOGY_VQA_A), values),
                         answer_type="closed", closed=pathology)
        if pathology in PATHOLOGY_LABELS + ("normal",):
            lesion_names = sorted(self.lesions)
            lesion = lesion_names[0] if lesion_names else "lesion"
            finding = f"a {pathology} {lesion}" if pathology != "normal" else ""
            values = dict(self.context, lesion=lesion, finding=finding)
            question = T.fill(self.pick(T.NORMAL_Q), values)
            if pathology == "normal":
                answer, closed = T.fill(self.pick(T.NORMAL_YES), values), "yes"
            else:
                answer, closed = T.fill(self.pick(T.NORMAL_NO), values), "no"
            self.add("vqa", "normal", question, answer, answer_type="closed", closed=closed)
        diagnosis = unit.findings.get("diagnosis")
        if diagnosis in DIAGNOSIS_LABELS:
            self.add("vqa", "diagnosis", self.pick(T.DIAGNOSIS_Q), self.pick(T.DIAGNOSIS_VQA_A[diagnosis]),
                     answer_type="closed", closed=diagnosis.lower())

    # ------------------------------------------------------------ negatives
    def negative(self, name: str) -> None:
        entry = _entry(self.kb, name)
        group = self._presence_group(entry)
        values = self.values(entry)
        question = T.fill(self.pick(T.NEGATIVE_Q), values)
        answer = T.fill(self.pick(T.NEGATIVE_A[group]), values)
        reason = self.unit.absent.get(name, "")
        if reason == "domain" and self.rng.random() < 0.5:
            answer = T.fill(self.pick(T.NEGATIVE_REASON), values) + " " + answer
        elif reason == "label" and self.rng.random() < 0.5:
            answer += f" This {self.unit.domain.short} is normal."
        self.add("negative", "segment_absent", question, answer, answer_type="closed", closed="no", absent=(name,))

    def negative_clue(self, name: str) -> None:
        entry = _entry(self.kb, name)
        clues = self.unique_clues(entry)
        if not clues:
            return
        clue = self.pick(clues)
        values = self.values(entry, clue=plain(clue))
        question = T.fill(self.pick(T.REASONING_Q["clue"]), values)
        # nothing in the answer may be grounded: the subject is absent and references stay plain
        answer = plain(T.fill(self.pick(T.NEGATIVE_CLUE_A), values))
        self.add("negative", "clue_absent", question, answer, answer_type="closed", closed="no", absent=(name,))

    # ------------------------------------------------------------ all of it
    def run(self) -> list[dict]:
        unit = self.unit
        focus = [name for name in unit.focus if name in unit.targets]
        for name in focus:
            entry = _entry(self.kb, name)
            self.text_seg(name)
            if entry.is_diffuse:
                continue
            self.perception(name)
            self.reasoning(name)
            labelled = self.prompt_reasoning_label(name)
            if not labelled or self.rng.random() < 0.5:
                self.prompt_reasoning_knowledge(name)
        others = [n for n in unit.targets if n not in focus[:1]]
        if focus and others:
            count = 2 if len(unit.targets) == 2 or self.rng.random() < 0.7 else 3
            chosen = [focus[0]] + [others[i] for i in sorted(self.rng.choice(len(others), size=min(count - 1, len(others)), replace=False))]
            self.text_seg_multi(chosen)
        if unit.volume:
            self.vqa_plane()
            if self.rng.random() < 0.5:
                self.vqa_modality()
        else:
            self.vqa_modality()
        if focus:
            self.vqa_presence(self.pick(focus), True)
        self.vqa_findings()
        if unit.absent:
            names = sorted(unit.absent)
            labelled = [n for n in names if unit.absent[n] == "label"]
            self.vqa_presence(self.pick(labelled or names), False)
            others = [n for n in names if n not in labelled]
            if labelled:  # the source says this image is normal: always ask for its lesion
                self.negative(self.pick(labelled))
            if others and (not labelled or self.rng.random() < 0.5):
                self.negative(self.pick(others))
            if unit.volume and self.rng.random() < 0.5:
                self.negative_clue(self.pick(names))
        return self.samples


def generate(unit: Unit, knowledge: Knowledge, seed: int, dataset_lesions: set[str] | None = None) -> list[dict]:
    return Generator(unit, knowledge, seed, dataset_lesions).run()


def seg_count(text: str) -> int:
    return text.count("<SEG>")


__all__ = ["PERSPECTIVES", "Target", "Unit", "generate", "unit_rng", "seg_count", "references"]
