"""Coded terminology for segments: medical terms -> SNOMED CT (or DICOM) codes and colours.

A segment in 3D Slicer carries a *terminology entry*: a segmentation category
(e.g. SCT 123037004 "Anatomical Structure"), a type (SCT 10200004 "Liver"), an
optional type modifier (SCT 7771000 "Left") and, for findings, an optional
anatomic region with its own modifier (a "Cyst" in the "Kidney", "Left").
The same codes go into DICOM SEG (SegmentedPropertyCategory/Type/Modifier and
AnatomicRegion sequences).

This module maps free-form terms ("kidney_left", "Left kidney", "lungs",
"COVID-19 infection", "vertebrae_L1") to such entries using the table in
``resources/terminology.json``. Every code in that table was checked against
3D Slicer's terminology files, DICOM PS3.16, the TotalSegmentator mapping or a
published value set (each entry records its sources). Terms without a verified
code are returned as explicit *custom* entries with a private coding scheme
(``99MIMO``) instead of an invented code.

Only the standard library is used.
"""
from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

__all__ = [
    "Code",
    "TerminologyEntry",
    "Terminology",
    "normalize_term",
    "SEGMENTATION_CONTEXT",
    "REGION_CONTEXT",
    "CUSTOM_SCHEME",
    "CUSTOM_CATEGORY",
    "DEFAULT_TABLE",
    "TERM_JSON_SCHEMA",
]

#: Terminology context name used in Slicer terminology strings and in the exported ``*.term.json``.
SEGMENTATION_CONTEXT = "Segmentation category and type - MIMOAssistant"
#: Slicer's anatomic region context (shipped with Slicer) used for anatomic regions of findings.
REGION_CONTEXT = "Anatomic codes - DICOM master list"
#: Private coding scheme (DICOM: private schemes start with "99") for terms without a verified code.
CUSTOM_SCHEME = "99MIMO"
#: JSON schema id that Slicer's terminology reader accepts for segmentation contexts.
TERM_JSON_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
#: The bundled table.
DEFAULT_TABLE = Path(__file__).resolve().parent / "resources" / "terminology.json"

_SLICER_FORBIDDEN = ("~", "^")
_MAX_MEANING = 64  # DICOM CodeMeaning is LO (64 characters)


# --------------------------------------------------------------------------- codes
@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    scheme: str  # "SCT"
    value: str  # "10200004"
    meaning: str  # "Liver"

    def __post_init__(self) -> None:
        for field_name in ("scheme", "value", "meaning"):
            v = getattr(self, field_name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"Code.{field_name} must be a non-empty string, got {v!r}")
            if any(ch in v for ch in _SLICER_FORBIDDEN):
                raise ValueError(f"Code.{field_name} must not contain '~' or '^' (Slicer separators): {v!r}")

    def same_code(self, other: "Code | None") -> bool:
        """True when ``other`` has the same scheme and value (the meaning is only a label)."""
        return other is not None and self.scheme == other.scheme and self.value == other.value

    def to_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @classmethod
    def from_slicer(cls, text: str) -> "Code | None":
        """Parse ``SCHEME^VALUE^MEANING``; an empty triple (``^^`` or ``""``) gives None."""
        if text is None or text.strip() in ("", "^^"):
            return None
        parts = text.split("^")
        if len(parts) != 3:
            raise ValueError(f"expected 'scheme^value^meaning', got {text!r}")
        if not any(p.strip() for p in parts):
            return None
        return cls(parts[0], parts[1], parts[2])

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Code | None":
        if data is None:
            return None
        return cls(str(data["scheme"]), str(data["value"]), str(data["meaning"]))


#: Category used for terms that are not in the table at all.
CUSTOM_CATEGORY = Code(CUSTOM_SCHEME, "CUSTOM", "Custom")


def _validate_color(color: Any) -> tuple[int, int, int]:
    try:
        rgb = tuple(color)
    except TypeError:
        raise ValueError(f"color must be three integers 0-255, got {color!r}") from None
    if len(rgb) != 3:
        raise ValueError(f"color must be three integers 0-255, got {color!r}")
    out = []
    for c in rgb:
        if isinstance(c, bool) or not float(c).is_integer() or not 0 <= int(c) <= 255:
            raise ValueError(f"color must be three integers 0-255, got {color!r}")
        out.append(int(c))
    return (out[0], out[1], out[2])


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class TerminologyEntry:
    """One coded segment description.

    ``modifier`` qualifies the type (laterality of an organ); ``region`` and
    ``region_modifier`` give the anatomic location of a finding (a lesion in the
    left breast: type Lesion, region Breast, region modifier Left).
    """

    name: str  # display name used for the segment, e.g. "liver", "left kidney"
    category: Code
    type: Code
    modifier: Code | None
    color: tuple[int, int, int]  # 0-255
    custom: bool = False  # True when no verified code exists: the entry is explicitly custom
    region: Code | None = None
    region_modifier: Code | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"TerminologyEntry.name must be a non-empty string, got {self.name!r}")
        for field_name in ("category", "type"):
            if not isinstance(getattr(self, field_name), Code):
                raise TypeError(f"TerminologyEntry.{field_name} must be a Code")
        for field_name in ("modifier", "region", "region_modifier"):
            v = getattr(self, field_name)
            if v is not None and not isinstance(v, Code):
                raise TypeError(f"TerminologyEntry.{field_name} must be a Code or None")
        if self.region_modifier is not None and self.region is None:
            raise ValueError("region_modifier needs a region")
        object.__setattr__(self, "color", _validate_color(self.color))
        object.__setattr__(self, "custom", bool(self.custom))

    # ---- convenience
    @property
    def laterality(self) -> str | None:
        """"left", "right", "bilateral" or None, from the type or region modifier."""
        for code in (self.modifier, self.region_modifier):
            if code is not None and code.scheme == "SCT":
                side = _SIDE_BY_CODE.get(code.value)
                if side:
                    return side
        return None

    @property
    def color_float(self) -> tuple[float, float, float]:
        """Colour as 0-1 floats (what vtkSegment.SetColor expects)."""
        return (self.color[0] / 255.0, self.color[1] / 255.0, self.color[2] / 255.0)

    @property
    def color_hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color)

    def same_codes(self, other: "TerminologyEntry") -> bool:
        """True when both entries carry the same codes (names, meanings and colours ignored)."""

        def eq(a: Code | None, b: Code | None) -> bool:
            return (a is None and b is None) or (a is not None and a.same_code(b))

        return (self.category.same_code(other.category) and self.type.same_code(other.type)
                and eq(self.modifier, other.modifier) and eq(self.region, other.region)
                and eq(self.region_modifier, other.region_modifier))

    # ---- Slicer terminology string
    def to_slicer_string(self, context: str = SEGMENTATION_CONTEXT, region_context: str = REGION_CONTEXT) -> str:
        """Serialize in the format of vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry.

        ``context~CAT~TYPE~MODIFIER~regionContext~REGION~REGIONMODIFIER`` where each
        code is ``scheme^value^meaning`` and a missing code is ``^^``. The region
        context name is left empty when there is no region, as Slicer does.
        """
        for label, text in (("context", context), ("region_context", region_context)):
            if any(ch in text for ch in _SLICER_FORBIDDEN):
                raise ValueError(f"{label} must not contain '~' or '^': {text!r}")

        def code(c: Code | None) -> str:
            return c.to_slicer() if c is not None else "^^"

        return "~".join([
            context,
            code(self.category),
            code(self.type),
            code(self.modifier),
            region_context if self.region is not None else "",
            code(self.region),
            code(self.region_modifier),
        ])

    @classmethod
    def from_slicer_string(cls, s: str, name: str = "", color=(128, 128, 128)) -> "TerminologyEntry":
        """Parse a Slicer terminology string (inverse of :meth:`to_slicer_string`).

        Slicer strings carry no colour and no display name: ``color`` is used as
        given and ``name`` defaults to "<modifier> <type meaning>" in lower case.
        The entry is marked custom when its category or type uses a private ("99...") scheme.
        """
        if not isinstance(s, str) or not s.strip():
            raise ValueError("terminology string must be a non-empty string")
        parts = s.strip().split("~")
        if len(parts) < 3 or len(parts) > 7:
            raise ValueError(f"not a Slicer terminology string (expected 7 '~'-separated fields): {s!r}")
        parts += ["^^", "", "^^", "^^"][len(parts) - 3:]
        category = Code.from_slicer(parts[1])
        type_ = Code.from_slicer(parts[2])
        if category is None or type_ is None:
            raise ValueError(f"terminology string has no category or type: {s!r}")
        modifier = Code.from_slicer(parts[3])
        region = Code.from_slicer(parts[5])
        region_modifier = Code.from_slicer(parts[6])
        if region is None:
            region_modifier = None
        if not name:
            name = type_.meaning if modifier is None else f"{modifier.meaning} {type_.meaning}"
            name = name.lower()
        custom = category.scheme.startswith("99") or type_.scheme.startswith("99")
        return cls(name=name, category=category, type=type_, modifier=modifier, color=color, custom=custom,
                   region=region, region_modifier=region_modifier)

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (used by ``--json`` outputs)."""
        return {
            "name": self.name,
            "category": self.category.to_dict(),
            "type": self.type.to_dict(),
            "modifier": self.modifier.to_dict() if self.modifier else None,
            "region": self.region.to_dict() if self.region else None,
            "region_modifier": self.region_modifier.to_dict() if self.region_modifier else None,
            "color": list(self.color),
            "custom": self.custom,
            "slicer_terminology": self.to_slicer_string(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TerminologyEntry":
        """Inverse of :meth:`to_dict` (the ``slicer_terminology`` key is ignored)."""
        return cls(name=data["name"], category=Code.from_dict(data["category"]), type=Code.from_dict(data["type"]),
                   modifier=Code.from_dict(data.get("modifier")), color=data["color"],
                   custom=bool(data.get("custom", False)), region=Code.from_dict(data.get("region")),
                   region_modifier=Code.from_dict(data.get("region_modifier")))


# --------------------------------------------------------------------------- term normalisation
_SIDE_BY_CODE = {"7771000": "left", "24028007": "right", "51440002": "bilateral"}
_SIDE_WORDS = {
    "left": "left", "l": "left", "lt": "left",
    "right": "right", "r": "right", "rt": "right",
    "bilateral": "bilateral", "both": "bilateral",
}
_IRREGULAR_PLURALS = {
    "vertebrae": "vertebra", "nuclei": "nucleus", "teeth": "tooth", "metastases": "metastasis",
    "bronchi": "bronchus", "emboli": "embolus", "testes": "testis", "ovaries": "ovary", "feet": "foot",
    "phalanges": "phalanx", "pleurae": "pleura", "vasculature": "vasculature", "fungi": "fungus",
}
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ys", "as")
# words that are also measurement terms: in free text "radius 5 mm" / "radius of" is not the bone
_MEASUREMENT_WORDS = frozenset({"radius"})


def normalize_term(term: str) -> str:
    """Lower-case, Unicode-normalised, punctuation/underscores/hyphens as single spaces."""
    text = unicodedata.normalize("NFKC", str(term)).casefold()
    text = re.sub(r"[\W_]+", " ", text).strip()
    text = re.sub(r"\b(left and right|right and left|left right|right left)\b", "bilateral", text)
    return text


def _singular_forms(word: str) -> list[str]:
    out = []
    if word in _IRREGULAR_PLURALS:
        out.append(_IRREGULAR_PLURALS[word])
    if len(word) > 3:
        if word.endswith("ies"):
            out.append(word[:-3] + "y")
        if word.endswith("ae"):
            out.append(word[:-1])
        if word.endswith("i"):
            out.append(word[:-1] + "us")
        if word.endswith("es"):
            out.append(word[:-2])
        if word.endswith("s") and not word.endswith(_NOT_PLURAL_ENDINGS):
            out.append(word[:-1])
    return [w for w in dict.fromkeys(out) if w and w != word]


def _singular_variants(key: str) -> Iterator[str]:
    """Keys with one word made singular, last word first."""
    words = key.split()
    for i in range(len(words) - 1, -1, -1):
        for form in _singular_forms(words[i]):
            yield " ".join(words[:i] + [form] + words[i + 1:])


def _custom_value(name: str) -> str:
    return "M" + hashlib.sha1(normalize_term(name).encode("utf-8")).hexdigest()[:8].upper()


def _hash_color(name: str) -> tuple[int, int, int]:
    """A stable, reasonably saturated colour derived from the normalised name."""
    digest = hashlib.sha1(normalize_term(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    sat = 0.45 + (digest[2] / 255.0) * 0.3
    val = 0.75 + (digest[3] / 255.0) * 0.2
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))


def _clean_meaning(text: str) -> str:
    text = re.sub(r"[~^\s]+", " ", text).strip()
    return text[:_MAX_MEANING].rstrip() or "Custom"


# --------------------------------------------------------------------------- the table
class Terminology:
    """A searchable terminology table.

    Use :meth:`default` for the bundled table. Instances are immutable after construction.
    """

    def __init__(self, entries: Iterable[TerminologyEntry], aliases: Mapping[str, TerminologyEntry] | None = None,
                 families: Mapping[str, Mapping[str, TerminologyEntry]] | None = None,
                 context: str = SEGMENTATION_CONTEXT, region_context: str = REGION_CONTEXT) -> None:
        self._entries: tuple[TerminologyEntry, ...] = tuple(entries)
        self.context = context
        self.region_context = region_context
        index: dict[str, TerminologyEntry] = {}
        for e in self._entries:
            index.setdefault(normalize_term(e.name), e)
        for key, e in (aliases or {}).items():
            index.setdefault(normalize_term(key), e)
        self._index = index
        # families: look-up key of an entry -> {"": base, "left": ..., "right": ..., "bilateral": ...}
        self._families = {normalize_term(k): dict(v) for k, v in (families or {}).items()}
        self._max_words = max((len(k.split()) for k in self._index), default=1) + 3

    # ---- construction
    @classmethod
    def default(cls) -> "Terminology":
        """The bundled table (loaded once per process)."""
        return _default_terminology()

    @classmethod
    def from_json(cls, path: str | Path) -> "Terminology":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Terminology":
        """Build from the ``terminology.json`` structure (see the file's description)."""
        if data.get("format") != "mimo-terminology":
            raise ValueError("not a mimo-terminology table")
        custom_scheme = data.get("custom_scheme", CUSTOM_SCHEME)
        categories = {k: Code.from_dict(v) for k, v in data["categories"].items()}
        modifiers = {k: Code.from_dict(v) for k, v in data["modifiers"].items()}
        entries: list[TerminologyEntry] = []
        aliases: dict[str, TerminologyEntry] = {}
        families: dict[str, dict[str, TerminologyEntry]] = {}
        for raw in data["entries"]:
            name = raw["name"]
            custom = bool(raw.get("custom", False))
            if custom:
                type_ = Code(custom_scheme, _custom_value(name), _clean_meaning(name[:1].upper() + name[1:]))
            else:
                type_ = Code.from_dict(raw["type"])
            category = categories[raw["category"]]
            fixed_modifier = modifiers[raw["modifier"]] if raw.get("modifier") else None
            region = Code.from_dict(raw.get("region"))
            base = TerminologyEntry(name=name, category=category, type=type_, modifier=fixed_modifier,
                                    color=raw["color"], custom=custom, region=region)
            entries.append(base)
            keys = [name] + list(raw.get("synonyms", []))
            for k in keys:
                aliases.setdefault(k, base)
            family = {"": base}
            lat = raw.get("laterality")
            if lat:
                on_region = lat.get("applies_to", "type") == "region"
                if on_region and region is None:
                    raise ValueError(f"{name}: laterality on the region needs a region")
                for side in ("left", "right", "bilateral"):
                    if side not in lat:
                        continue
                    side_data = lat[side]
                    side_name = side_data.get("name") or f"{side} {name}"
                    side_code = modifiers[side]
                    ent = TerminologyEntry(
                        name=side_name, category=category, type=type_,
                        modifier=fixed_modifier if on_region else side_code,
                        color=side_data.get("color", raw["color"]), custom=custom, region=region,
                        region_modifier=side_code if on_region else None)
                    entries.append(ent)
                    aliases.setdefault(side_name, ent)
                    family[side] = ent
                    if side_data.get("name"):
                        keys.append(side_data["name"])
            for k in keys:
                families.setdefault(k, family)
        return cls(entries, aliases, families, context=data.get("segmentation_context", SEGMENTATION_CONTEXT),
                   region_context=data.get("region_context", REGION_CONTEXT))

    # ---- queries
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TerminologyEntry]:
        return iter(self._entries)

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and bool(term.strip()) and self.find(term) is not None

    def entries(self) -> tuple[TerminologyEntry, ...]:
        return self._entries

    def names(self) -> list[str]:
        """Display names of all entries (laterality variants included), in table order."""
        return [e.name for e in self._entries]

    def find(self, term: str) -> TerminologyEntry | None:
        """The entry for ``term`` or None when it is not known (no custom fallback)."""
        if not isinstance(term, str):
            return None
        key = normalize_term(term)
        if not key:
            return None
        hit = self._exact(key)
        if hit is not None:
            return hit
        words = key.split()
        sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
        if len(sides) != 1:
            return None
        side = sides.pop()
        rest = " ".join(w for w in words if w not in _SIDE_WORDS)
        if not rest:
            return None
        family = self._family(rest)
        return family.get(side) if family else None

    def lookup(self, term: str) -> TerminologyEntry:
        """Like :meth:`find`, but an unknown term gives an explicit custom entry.

        The custom entry is named after the term (stripped), uses the private scheme
        ``99MIMO`` and a colour derived deterministically from the term. A laterality
        word around an unknown term is kept as a coded modifier ("left foo" -> custom
        "Foo" with modifier Left). Raises ValueError for an empty or blank term.
        """
        if not isinstance(term, str) or not term.strip():
            raise ValueError(f"terminology lookup needs a non-empty term, got {term!r}")
        hit = self.find(term)
        if hit is not None:
            return hit
        name = re.sub(r"\s+", " ", term.strip())
        key = normalize_term(name)
        words = key.split()
        sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
        rest = " ".join(w for w in words if w not in _SIDE_WORDS)
        modifier = None
        meaning_src = name
        if len(sides) == 1 and rest:
            side = next(iter(sides))
            modifier = Code("SCT", *{"left": ("7771000", "Left"), "right": ("24028007", "Right"),
                                     "bilateral": ("51440002", "Right and left")}[side])
            meaning_src = rest
        meaning = _clean_meaning(meaning_src[:1].upper() + meaning_src[1:])
        return TerminologyEntry(name=name, category=CUSTOM_CATEGORY,
                                type=Code(CUSTOM_SCHEME, _custom_value(meaning_src), meaning),
                                modifier=modifier, color=_hash_color(name), custom=True)

    def find_by_code(self, type_: Code, modifier: Code | None = None, region: Code | None = None,
                     region_modifier: Code | None = None) -> TerminologyEntry | None:
        """The table entry with exactly these codes (scheme and value compared), or None."""

        def eq(a: Code | None, b: Code | None) -> bool:
            return (a is None and b is None) or (a is not None and a.same_code(b))

        for e in self._entries:
            if (e.type.same_code(type_) and eq(e.modifier, modifier) and eq(e.region, region)
                    and eq(e.region_modifier, region_modifier)):
                return e
        return None

    def same_concept(self, first: str, second: str) -> bool:
        """True when two terms name the same structure: the same codes where the table knows
        both ("gall bladder" and "gallbladder"), else the same normalised words."""
        a, b = self.find(first), self.find(second)
        if a is not None and b is not None:
            return a.same_codes(b)
        return normalize_term(first) == normalize_term(second)

    def find_terms(self, text: str) -> list[tuple[int, int, TerminologyEntry]]:
        """Known terms mentioned in ``text`` as ``(start, end, entry)`` character spans.

        Longer matches win over shorter ones, matches do not overlap, and the result
        is sorted by start. Words of one term may be joined by spaces, underscores or
        hyphens but not by other punctuation.
        """
        if not isinstance(text, str) or not text:
            return []
        tokens = [(m.start(), m.end()) for m in re.finditer(r"[^\W_]+", text)]
        joinable = [bool(re.fullmatch(r"[\s_\-]*", text[tokens[i][1]:tokens[i + 1][0]]))
                    for i in range(len(tokens) - 1)]
        candidates: list[tuple[int, int, TerminologyEntry]] = []
        for i in range(len(tokens)):
            j_max = i + 1
            while j_max < len(tokens) and j_max - i < self._max_words and joinable[j_max - 1]:
                j_max += 1
            for j in range(j_max, i, -1):
                start, end = tokens[i][0], tokens[j - 1][1]
                entry = self.find(text[start:end])
                if entry is not None and not self._is_measurement(text, tokens, i, j):
                    candidates.append((start, end, entry))
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        chosen: list[tuple[int, int, TerminologyEntry]] = []
        for cand in candidates:
            if all(cand[1] <= s or cand[0] >= e for s, e, _ in chosen):
                chosen.append(cand)
        chosen.sort(key=lambda c: c[0])
        return chosen

    # ---- export
    def to_term_json_dict(self) -> dict[str, Any]:
        """The table as a Slicer ``SegmentationCategoryTypeModifier`` context (``*.term.json``).

        Categories -> types -> modifiers, with ``3dSlicerLabel`` set to the entry names
        and ``recommendedDisplayRGBValue`` to the entry colours. Anatomic regions of
        findings are not part of a segmentation context; Slicer takes them from its
        anatomic context (:data:`REGION_CONTEXT`), so region-specific entries contribute
        only their type.
        """
        categories: dict[tuple[str, str], dict[str, Any]] = {}
        types: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        # base entries (no region, no modifier) first so they label the type
        ordered = sorted(self._entries, key=lambda e: (e.region is not None, e.modifier is not None))
        for e in ordered:
            ckey = (e.category.scheme, e.category.value)
            cat = categories.get(ckey)
            if cat is None:
                cat = _code_json(e.category)
                cat["showAnatomy"] = e.category.value not in ("123037004", "91720002")
                cat["Type"] = []
                categories[ckey] = cat
            tkey = ckey + (e.type.scheme, e.type.value)
            typ = types.get(tkey)
            if typ is None:
                typ = _code_json(e.type)
                if e.modifier is None:
                    typ["3dSlicerLabel"] = e.name
                    typ["recommendedDisplayRGBValue"] = list(e.color)
                cat["Type"].append(typ)
                types[tkey] = typ
            elif e.modifier is None and "3dSlicerLabel" not in typ:
                typ["3dSlicerLabel"] = e.name
                typ["recommendedDisplayRGBValue"] = list(e.color)
            if e.modifier is not None:
                mods = typ.setdefault("Modifier", [])
                if not any(m["CodingSchemeDesignator"] == e.modifier.scheme and m["CodeValue"] == e.modifier.value
                           for m in mods):
                    mod = _code_json(e.modifier)
                    mod["3dSlicerLabel"] = e.name
                    mod["recommendedDisplayRGBValue"] = list(e.color)
                    mods.append(mod)
        for typ in types.values():
            if "3dSlicerLabel" not in typ:
                # a type that only occurs with modifiers: label and colour from its first modifier
                first = typ["Modifier"][0]
                typ["3dSlicerLabel"] = typ["CodeMeaning"].lower()
                typ["recommendedDisplayRGBValue"] = list(first["recommendedDisplayRGBValue"])
        return {
            "SegmentationCategoryTypeContextName": self.context,
            "@schema": TERM_JSON_SCHEMA,
            "SegmentationCodes": {"Category": list(categories.values())},
        }

    def write_term_json(self, path: str | Path) -> None:
        """Write the table as a Slicer terminology context file (``*.term.json``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_term_json_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")

    # ---- internals
    @staticmethod
    def _is_measurement(text: str, tokens: list[tuple[int, int]], i: int, j: int) -> bool:
        """True for a lone measurement word used as such ("radius 5 mm", "radius of the lesion")."""
        if j - i != 1 or normalize_term(text[tokens[i][0]:tokens[i][1]]) not in _MEASUREMENT_WORDS:
            return False
        if j >= len(tokens):
            return False
        nxt = text[tokens[j][0]:tokens[j][1]].casefold()
        return nxt.isdigit() or nxt in ("of", "is", "was", "equals", "mm", "cm")

    def _exact(self, key: str) -> TerminologyEntry | None:
        hit = self._index.get(key)
        if hit is not None:
            return hit
        for variant in _singular_variants(key):
            hit = self._index.get(variant)
            if hit is not None:
                return hit
        return None

    def _family(self, key: str) -> Mapping[str, TerminologyEntry] | None:
        fam = self._families.get(key)
        if fam is not None:
            return fam
        for variant in _singular_variants(key):
            fam = self._families.get(variant)
            if fam is not None:
                return fam
        return None


def _code_json(code: Code) -> dict[str, Any]:
    out: dict[str, Any] = {
        "CodingSchemeDesignator": code.scheme,
        "CodeValue": code.value,
        "CodeMeaning": code.meaning,
    }
    if code.scheme == "SCT":
        out["SNOMEDCTConceptID"] = code.value
    return out


@functools.lru_cache(maxsize=1)
def _default_terminology() -> Terminology:
    return Terminology.from_json(DEFAULT_TABLE)
