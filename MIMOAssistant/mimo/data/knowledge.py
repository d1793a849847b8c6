"""The knowledge base behind the reasoning questions: textbook facts per structure and finding.

The MIMO paper wrote its complex-reasoning data with GPT-4o and Wikipedia/UMLS retrieval. No
such service is reachable here, so the facts live in ``knowledge.json`` beside this module:
for every structure the builder can produce (all open2d targets, every TotalSegmentator class,
the AAL atlas regions, spleen, spinal cord, liver, heart, thoracic spine) and for the
image-level findings (BUSI pathology, COVID-QU-Ex diagnosis). Facts are conservative,
general statements (never about one image): what a structure is, where it lies, what it does,
how it looks per modality, what lies next to it and why it matters clinically.

Text conventions (see ``knowledge.json`` "fields"): predicates follow "The <name>" and agree
with the name's grammatical number; ``[[name]]`` references another entry and is grounded
(``<p>name</p><SEG>``) only when that structure's mask exists in the image; families expand
``{var}`` placeholders per member (left/right pairs, vertebrae, ribs, atlas regions).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

KNOWLEDGE_FILE = Path(__file__).resolve().with_name("knowledge.json")

_REFERENCE = re.compile(r"\[\[([^\[\]]+)\]\]")
_WHOLE_VAR = re.compile(r"\{(\w+)\}")

#: Knowledge-base appearance keys per sample modality.
APPEARANCE_KEYS = {
    "CT": "CT",
    "MRI": "MRI",
    "ultrasound": "ultrasound",
    "X-ray": "X-ray",
    "endoscopy": "endoscopy",
    "fundus photography": "fundus photography",
    "microscopy": "microscopy",
    "histopathology": "histopathology",
    "electron microscopy": "electron microscopy",
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass
class Entry:
    """Facts about one structure or lesion. Text fields are predicates ("is ...", "lies ...")."""

    name: str
    category: str
    kind: str  # "anatomy" | "lesion" | "diffuse"
    plural: bool = False
    article: str = "a"
    system: str | None = None
    what: str | None = None
    location: str | None = None
    function: str | None = None
    significance: str | None = None
    clues: tuple[str, ...] = ()
    appearance: dict[str, str] = field(default_factory=dict)
    adjacent: tuple[str, ...] = ()
    part_of: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def is_diffuse(self) -> bool:
        return self.kind == "diffuse"

    @property
    def is_lesion(self) -> bool:
        return self.kind == "lesion"

    def fact(self, kind: str) -> str | None:
        """A predicate by name: what, location, function, significance, system (as 'belongs to ...')."""
        return getattr(self, kind, None)

    def texts(self) -> Iterable[str]:
        for value in (self.what, self.location, self.function, self.significance, *self.clues, *self.appearance.values()):
            if value:
                yield value


def _fill(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    """Expand ``{var}`` placeholders; a value that is exactly ``{var}`` takes the variable as is (lists)."""
    if isinstance(value, str):
        whole = _WHOLE_VAR.fullmatch(value)
        if whole and not isinstance(variables.get(whole.group(1)), str) and whole.group(1) in variables:
            return variables[whole.group(1)]
        try:
            return value.format_map(variables)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"knowledge base: cannot expand {value!r} in {where}: {error}") from error
    if isinstance(value, list):
        return [_fill(item, variables, where) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, variables, where) for key, item in value.items()}
    return value


def _entry(name: str, data: Mapping[str, Any]) -> Entry:
    known = {f for f in Entry.__dataclass_fields__ if f != "name"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"knowledge base entry {name!r} has unknown fields {sorted(unknown)}")
    values = dict(data)
    for key in ("clues", "adjacent", "aliases"):
        values[key] = tuple(values.get(key) or ())
    values["appearance"] = dict(values.get("appearance") or {})
    return Entry(name=name, **values)


class Knowledge:
    """All entries by name (and alias), with the findings vocabulary."""

    def __init__(self, entries: Iterable[Entry], findings: Mapping[str, Any] | None = None,
                 aal_names: Mapping[str, str] | None = None) -> None:
        self.entries: dict[str, Entry] = {}
        self._index: dict[str, str] = {}
        for entry in entries:
            if entry.name in self.entries:
                raise ValueError(f"knowledge base: duplicate entry {entry.name!r}")
            self.entries[entry.name] = entry
        for entry in self.entries.values():
            self._index[_normalise(entry.name)] = entry.name
        for entry in self.entries.values():
            for alias in entry.aliases:
                self._index.setdefault(_normalise(alias), entry.name)
        self.findings: dict[str, Any] = dict(findings or {})
        self.aal_names: dict[str, str] = dict(aal_names or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Knowledge":
        if data.get("format") != "mimo-knowledge":
            raise ValueError("not a mimo knowledge base (format must be 'mimo-knowledge')")
        entries = [_entry(name, body) for name, body in data.get("entries", {}).items()]
        for number, family in enumerate(data.get("families", [])):
            for member in family["members"]:
                variables = dict(member.get("vars") or {})
                where = f"family {number} member {member['name']!r}"
                body = _fill(dict(family["entry"]), variables, where)
                body.update(_fill(dict(member.get("override") or {}), variables, where))
                entries.append(_entry(member["name"], body))
        return cls(entries, data.get("findings"), data.get("aal_names"))

    @classmethod
    def from_json(cls, path: str | Path) -> "Knowledge":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "Knowledge":
        return cls.from_json(KNOWLEDGE_FILE)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Entry | None:
        key = self._index.get(_normalise(name))
        return self.entries.get(key) if key else None

    def __getitem__(self, name: str) -> Entry:
        entry = self.get(name)
        if entry is None:
            raise KeyError(f"no knowledge-base entry for {name!r}")
        return entry

    def problems(self) -> list[str]:
        """Consistency checks: every reference and neighbour resolves, every entry can be described."""
        found = []
        for entry in self.entries.values():
            if entry.kind not in ("anatomy", "lesion", "diffuse"):
                found.append(f"{entry.name}: unknown kind {entry.kind!r}")
            if not entry.what or not entry.location:
                found.append(f"{entry.name}: needs 'what' and 'location'")
            if not (entry.function or entry.significance):
                found.append(f"{entry.name}: needs 'function' or 'significance'")
            for text in entry.texts():
                if "{" in text or "}" in text:
                    found.append(f"{entry.name}: unexpanded placeholder in {text!r}")
                for ref in _REFERENCE.findall(text):
                    if ref not in self.entries:
                        found.append(f"{entry.name}: reference [[{ref}]] has no entry")
            for neighbour in entry.adjacent:
                if neighbour not in self.entries:
                    found.append(f"{entry.name}: neighbour {neighbour!r} has no entry")
                elif neighbour == entry.name:
                    found.append(f"{entry.name}: lists itself as a neighbour")
        return found


def references(text: str) -> list[str]:
    """Names referenced with ``[[name]]`` in order."""
    return _REFERENCE.findall(text)


def plain(text: str) -> str:
    """The text with references written as plain names (for questions)."""
    return _REFERENCE.sub(lambda m: m.group(1), text)


def ground(text: str, present: Iterable[str], grounded: list[str]) -> str:
    """Write ``[[name]]`` as ``<p>name</p><SEG>`` the first time a present structure is named.

    ``grounded`` collects the grounded names in the order of their ``<SEG>`` tokens (it may
    already hold names grounded earlier in the same answer); absent or repeated names stay plain.
    """
    present = set(present)

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in present and name not in grounded:
            grounded.append(name)
            return f"<p>{name}</p><SEG>"
        return name

    return _REFERENCE.sub(replace, text)
