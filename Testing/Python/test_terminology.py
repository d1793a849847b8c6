"""Tests for mimo.terminology (term -> SNOMED CT / DICOM codes, colours, Slicer strings and term.json).

Run: cd <repo> && PYTHONPATH=MIMOAssistant python -m pytest Testing/Python/test_terminology.py -q

Tests that read the shared real-data folder (../shared/data, or $MIMO_SHARED_DATA) skip when it is
absent; tests that need 3D Slicer's logic (the slicer-core package) skip when it is not installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimo.terminology import (
    CUSTOM_SCHEME,
    DEFAULT_TABLE,
    REGION_CONTEXT,
    SEGMENTATION_CONTEXT,
    TERM_JSON_SCHEMA,
    Code,
    Terminology,
    TerminologyEntry,
    normalize_term,
)

REPO = Path(__file__).resolve().parents[2]
from conftest import SHARED_DATA as DATA_DIR  # noqa: E402

SCT = "SCT"
LEFT, RIGHT, BOTH = "7771000", "24028007", "51440002"
ANATOMICAL_STRUCTURE = "123037004"
MORPHOLOGICALLY_ALTERED = "49755003"

# TotalSegmentator "total" task: the 117 class names (as in its labels and in labels.json of the shared data)
TOTALSEG_TOTAL = """
spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left
lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right
esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left
kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1
vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5
vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4
vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk
subclavian_artery_right subclavian_artery_left common_carotid_artery_right common_carotid_artery_left
brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left superior_vena_cava
inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left
iliac_vena_right humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right
femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right
gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left
autochthon_right iliopsoas_left iliopsoas_right brain skull rib_left_1 rib_left_2 rib_left_3 rib_left_4
rib_left_5 rib_left_6 rib_left_7 rib_left_8 rib_left_9 rib_left_10 rib_left_11 rib_left_12 rib_right_1
rib_right_2 rib_right_3 rib_right_4 rib_right_5 rib_right_6 rib_right_7 rib_right_8 rib_right_9 rib_right_10
rib_right_11 rib_right_12 sternum costal_cartilages
""".split()
TOTALSEG_MR_EXTRA = ["lung_left", "lung_right", "vertebrae", "intervertebral_discs"]
# Classes with no verifiable generic code, deliberately custom. Keep this list small.
TOTALSEG_ALLOWED_CUSTOM = {"intervertebral_discs"}

# Expected SNOMED CT type codes, by class name without its side
TOTALSEG_TYPE = {
    "spleen": "78961009", "kidney": "64033007", "gallbladder": "28231008", "liver": "10200004",
    "stomach": "69695003", "pancreas": "15776009", "adrenal_gland": "23451007",
    "lung_upper_lobe": "45653009", "lung_lower_lobe": "90572001", "lung_middle_lobe": "72481006",
    "esophagus": "32849002", "trachea": "44567001", "thyroid_gland": "69748006", "small_bowel": "30315005",
    "duodenum": "38848004", "colon": "71854001", "urinary_bladder": "89837001", "prostate": "41216001",
    "kidney_cyst": "367643001", "sacrum": "54735007",
    "vertebrae_S1": "65985001", "vertebrae_L5": "49668003", "vertebrae_L4": "11994002",
    "vertebrae_L3": "36470004", "vertebrae_L2": "14293000", "vertebrae_L1": "66794005",
    "vertebrae_T12": "23215003", "vertebrae_T11": "12989004", "vertebrae_T10": "7610001",
    "vertebrae_T9": "82687006", "vertebrae_T8": "11068009", "vertebrae_T7": "62487009",
    "vertebrae_T6": "45296009", "vertebrae_T5": "56401006", "vertebrae_T4": "73071006",
    "vertebrae_T3": "1626008", "vertebrae_T2": "53733008", "vertebrae_T1": "64864005",
    "vertebrae_C7": "87391001", "vertebrae_C6": "36054005", "vertebrae_C5": "36978003",
    "vertebrae_C4": "5329002", "vertebrae_C3": "113205007", "vertebrae_C2": "39976000",
    "vertebrae_C1": "14806007", "heart": "80891009", "aorta": "15825003", "pulmonary_vein": "122972007",
    "brachiocephalic_trunk": "12691009", "subclavian_artery": "36765005", "common_carotid_artery": "32062004",
    "brachiocephalic_vein": "8887007", "atrial_appendage": "33626005", "superior_vena_cava": "48345005",
    "inferior_vena_cava": "64131007", "portal_vein_and_splenic_vein": "110765007",
    "iliac_artery": "73634005", "iliac_vena": "46027005", "humerus": "85050009", "scapula": "79601000",
    "clavicula": "51299004", "femur": "71341001", "hip": "29836001", "spinal_cord": "2748008",
    "gluteus_maximus": "181674001", "gluteus_medius": "78333006", "gluteus_minimus": "75297007",
    "autochthon": "244849004", "iliopsoas": "68455001", "brain": "12738006", "skull": "89546000",
    "rib_1": "48535007", "rib_2": "78247007", "rib_3": "25888004", "rib_4": "25523003", "rib_5": "15339008",
    "rib_6": "59558009", "rib_7": "24915002", "rib_8": "5953002", "rib_9": "22565002", "rib_10": "77644006",
    "rib_11": "58830002", "rib_12": "43993008", "sternum": "56873002", "costal_cartilages": "50016007",
    "lung": "39607008", "vertebrae": "51282000",
}

OPEN2D_TARGETS = ["polyp", "breast lesion", "thyroid nodule", "fetal head", "lungs", "COVID-19 infection",
                  "retinal vessels", "cell nuclei", "cell membranes"]
OPEN2D_ALLOWED_CUSTOM = {"cell membranes"}


@pytest.fixture(scope="module")
def term() -> Terminology:
    return Terminology.default()


def _strip_side(name: str) -> tuple[str, str | None]:
    for side in ("left", "right"):
        token = f"_{side}"
        if token in name:
            return name.replace(token, ""), side
    return name, None


# --------------------------------------------------------------------------- basic look-ups
def test_liver(term):
    e = term.lookup("Liver")
    assert e.name == "liver"
    assert e.type == Code("SCT", "10200004", "Liver")
    assert e.category == Code("SCT", "123037004", "Anatomical Structure")
    assert e.modifier is None and e.region is None
    assert e.color == (221, 130, 101)  # Slicer General Anatomy recommendedDisplayRGBValue
    assert e.custom is False
    assert term.find("liver") is e


@pytest.mark.parametrize("text", ["kidney_left", "left kidney", "Kidney Left", "KIDNEY-LEFT", "Left Kidney ",
                                  "kidney (left)", "l kidney", "lt kidney", "kidneys left"])
def test_left_kidney_forms(term, text):
    e = term.lookup(text)
    assert e.name == "left kidney"
    assert (e.type.scheme, e.type.value) == (SCT, "64033007")
    assert e.modifier == Code("SCT", LEFT, "Left")
    assert e.laterality == "left"
    assert e.color == (185, 102, 83)


def test_right_kidney_and_both(term):
    right = term.lookup("kidney_right")
    assert right.name == "right kidney" and right.modifier.value == RIGHT
    both = term.lookup("kidneys")
    assert both is term.lookup("both kidneys") is term.lookup("left and right kidney")
    assert both.type.value == "64033007" and both.modifier.value == BOTH
    assert both.laterality == "bilateral"


@pytest.mark.parametrize("text,value", [
    ("gall bladder", "28231008"), ("oesophagus", "32849002"), ("bladder", "89837001"),
    ("urinary_bladder", "89837001"), ("small bowel", "30315005"), ("thyroid", "69748006"),
    ("hepar", "10200004"), ("svc", "48345005"), ("IVC", "64131007"), ("innominate artery", "12691009"),
    ("tumour", "108369006"), ("neoplasm", "108369006"), ("haemorrhage", "50960005"), ("oedema", "79654002"),
    ("grey matter", "389081007"), ("pallidum", "14738005"), ("brainstem", "119238007"),
])
def test_synonyms(term, text, value):
    e = term.find(text)
    assert e is not None and e.type.value == value and not e.custom


@pytest.mark.parametrize("text,value,side", [
    ("clavicula_right", "51299004", "right"), ("autochthon_left", "244849004", "left"),
    ("iliac_vena_left", "46027005", "left"), ("iliac_artery_right", "73634005", "right"),
    ("right shoulder blade", "79601000", "right"), ("gluteus_minimus_right", "75297007", "right"),
    ("Hippocampus_L", "5366008", "left"), ("Caudate_R", "11000004", "right"),
])
def test_synonyms_with_side(term, text, value, side):
    e = term.find(text)
    assert e is not None and e.type.value == value and e.laterality == side


def test_plurals(term):
    lungs = term.lookup("lungs")
    assert lungs.name == "lungs"
    assert lungs.type == Code("SCT", "39607008", "Lung")
    assert lungs.modifier == Code("SCT", BOTH, "Right and left")
    assert term.lookup("Lungs") is lungs
    assert term.lookup("vertebrae").type.value == "51282000"
    assert term.lookup("costal_cartilages").type.value == "50016007"
    assert term.lookup("Ribs").type.value == "113197003"
    assert term.lookup("retinal vessel") is term.lookup("retinal vessels")
    assert term.lookup("cell nucleus") is term.lookup("cell nuclei")
    assert term.lookup("metastases").type.value == "14799000"
    assert term.lookup("polyps") is term.lookup("polyp")


@pytest.mark.parametrize("text,value,name", [
    ("vertebrae_L1", "66794005", "L1 vertebra"), ("vertebrae_C1", "14806007", "C1 vertebra"),
    ("vertebrae_T12", "23215003", "T12 vertebra"), ("vertebrae_S1", "65985001", "S1 vertebra"),
    ("L3 vertebra", "36470004", "L3 vertebra"), ("vertebra T7", "62487009", "T7 vertebra"),
])
def test_vertebrae(term, text, value, name):
    e = term.lookup(text)
    assert e.type.value == value and e.name == name and e.modifier is None


def test_ribs(term):
    e = term.lookup("rib_left_1")
    assert e.name == "left rib 1" and e.type.value == "48535007" and e.modifier.value == LEFT
    e = term.lookup("rib_right_12")
    assert e.name == "right rib 12" and e.type.value == "43993008" and e.modifier.value == RIGHT
    assert term.lookup("left first rib") is term.lookup("rib_left_1")


def test_region_laterality(term):
    e = term.lookup("kidney_cyst_left")
    assert e.name == "left kidney cyst"
    assert e.category.value == MORPHOLOGICALLY_ALTERED
    assert e.type == Code("SCT", "367643001", "Cyst")
    assert e.modifier is None
    assert e.region == Code("SCT", "64033007", "Kidney")
    assert e.region_modifier.value == LEFT and e.laterality == "left"
    assert term.lookup("left breast lesion").region_modifier.value == LEFT


def test_subclavian_artery_uses_generic_code(term):
    # 29700009 is "Right subclavian artery"; a left subclavian artery must not carry it
    e = term.lookup("subclavian_artery_left")
    assert e.type.value == "36765005" and e.modifier.value == LEFT


def test_open2d_targets(term):
    for target in OPEN2D_TARGETS:
        e = term.find(target)
        assert e is not None, target
        assert e.custom == (target in OPEN2D_ALLOWED_CUSTOM), target
    assert term.lookup("polyp").type == Code("SCT", "41329004", "Polyp")
    bl = term.lookup("breast lesion")
    assert bl.type.value == "52988006" and bl.region.value == "76752008"
    tn = term.lookup("thyroid nodule")
    assert tn.type.value == "27925004" and tn.region.value == "69748006"
    assert term.lookup("fetal head").type.value == "362865009"
    covid = term.lookup("COVID-19 infection")
    assert covid.type == Code("DCM", "112121", "Infiltrate")
    assert covid.modifier.value == "840539006" and covid.region.value == "39607008"
    rv = term.lookup("retinal vessels")
    assert rv.type.value == "59820001" and rv.region.value == "5665001"
    assert term.lookup("cell nuclei").type.value == "84640000"
    membranes = term.lookup("cell membranes")
    assert membranes.type.scheme == CUSTOM_SCHEME and membranes.category.value == ANATOMICAL_STRUCTURE


def test_volume_structures(term):
    assert term.lookup("spleen").type.value == "78961009"
    assert term.lookup("spinal cord").type.value == "2748008"
    assert term.lookup("heart").type.value == "80891009"
    assert term.lookup("thoracic spine").type.value == "122495006"
    assert term.lookup("brain").type.value == "12738006"
    for lobe, value in [("frontal lobe", "83251001"), ("temporal lobe", "78277001"),
                        ("parietal lobe", "16630005"), ("occipital lobe", "31065004")]:
        assert term.lookup(lobe).type.value == value
        assert term.lookup(f"right {lobe}").modifier.value == RIGHT


def test_findings(term):
    expected = {"tumor": "108369006", "lesion": "52988006", "cyst": "367643001", "nodule": "27925004",
                "mass": "4147007", "polyp": "41329004", "hemorrhage": "50960005", "edema": "79654002",
                "necrosis": "6574001", "metastasis": "14799000"}
    for name, value in expected.items():
        e = term.lookup(name)
        assert e.type.value == value, name
        assert e.category.value == MORPHOLOGICALLY_ALTERED, name


def test_common_anatomy(term):
    expected = {"kidney": "64033007", "prostate": "41216001", "bladder": "89837001", "bone": "272673000",
                "lung": "39607008", "pancreas": "15776009", "breast": "76752008", "uterus": "35039007",
                "rectum": "34402009", "muscle": "71616004", "skin": "39937001", "fat": "55603005"}
    for name, value in expected.items():
        assert term.lookup(name).type.value == value, name


# --------------------------------------------------------------------------- TotalSegmentator coverage
@pytest.mark.parametrize("cls", TOTALSEG_TOTAL + TOTALSEG_MR_EXTRA)
def test_totalsegmentator_class(term, cls):
    e = term.find(cls)
    assert e is not None, cls
    if cls in TOTALSEG_ALLOWED_CUSTOM:
        assert e.custom
        return
    assert not e.custom
    base, side = _strip_side(cls)
    assert e.type.scheme == SCT and e.type.value == TOTALSEG_TYPE[base], cls
    if base in ("atrial_appendage", "lung_middle_lobe"):
        # the type itself is sided (33626005 Left auricular appendage, 72481006 Middle lobe of right lung)
        assert e.laterality is None and side in e.type.meaning.lower()
    else:
        assert e.laterality == side, cls


def test_totalsegmentator_list_complete():
    assert len(TOTALSEG_TOTAL) == 117 and len(set(TOTALSEG_TOTAL)) == 117
    assert TOTALSEG_ALLOWED_CUSTOM <= set(TOTALSEG_TOTAL + TOTALSEG_MR_EXTRA)
    assert len(TOTALSEG_ALLOWED_CUSTOM) <= 2


def test_totalsegmentator_labels_json(term):
    path = DATA_DIR / "volumes" / "totalseg_example" / "labels.json"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (set MIMO_SHARED_DATA)")
    labels = json.loads(path.read_text())
    custom = set()
    for task, mapping in labels.items():
        for name in mapping.values():
            e = term.find(name)
            assert e is not None, (task, name)
            if e.custom:
                custom.add(name)
    assert custom <= TOTALSEG_ALLOWED_CUSTOM
    total = [v for k, m in labels.items() if "task total)" in k for v in m.values()]
    assert total == TOTALSEG_TOTAL


def test_open2d_manifest_targets(term):
    path = DATA_DIR / "open2d" / "manifest.jsonl"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (set MIMO_SHARED_DATA)")
    targets = set()
    with open(path) as f:
        for line in f:
            for mask in json.loads(line).get("masks", []):
                targets.add(mask["target"])
    assert targets == set(OPEN2D_TARGETS)
    for t in targets:
        e = term.find(t)
        assert e is not None and e.custom == (t in OPEN2D_ALLOWED_CUSTOM), t


def test_dcmqi_codes(term):
    path = DATA_DIR / "volumes" / "dcmqi_ct3slice" / "seg-example_multiple_segments.json"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (set MIMO_SHARED_DATA)")
    meta = json.loads(path.read_text())
    seen = 0
    for group in meta["segmentAttributes"]:
        for seg in group:
            e = term.lookup(seg["SegmentLabel"])
            t = seg["SegmentedPropertyTypeCodeSequence"]
            assert (e.type.scheme, e.type.value) == (t["CodingSchemeDesignator"], t["CodeValue"])
            if seg["SegmentLabel"] in ("Heart", "Thoracic spine"):
                assert list(e.color) == seg["recommendedDisplayRGBValue"]
            seen += 1
    assert seen == 3


def test_aal_regions_resolve(term):
    path = DATA_DIR / "volumes" / "mricron_colin27_aal" / "aal.nii.txt"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (set MIMO_SHARED_DATA)")
    names = [line.split()[1] for line in path.read_text().splitlines() if line.strip()]
    assert len(names) == 116
    coded = [n for n in names if not term.lookup(n).custom]
    # the deep nuclei, hippocampus, amygdala and insula of both sides are coded; the rest are custom
    assert {"Hippocampus_L", "Amygdala_R", "Thalamus_L", "Putamen_R", "Insula_L", "Pallidum_L"} <= set(coded)
    assert all(term.lookup(n).laterality in ("left", "right") for n in names if n.endswith(("_L", "_R")))


# --------------------------------------------------------------------------- unknown / invalid terms
def test_unknown_term_is_custom(term):
    assert term.find("zorbulator gland") is None
    e = term.lookup("Zorbulator gland")
    assert e.custom is True
    assert e.name == "Zorbulator gland"
    assert e.category.scheme == CUSTOM_SCHEME and e.type.scheme == CUSTOM_SCHEME
    assert e.type.meaning == "Zorbulator gland"
    assert len(e.type.value) <= 16  # DICOM CodeValue (SH)
    assert all(0 <= c <= 255 for c in e.color)
    # deterministic: same colour and code for the same term, also from a freshly loaded table
    again = Terminology.from_json(DEFAULT_TABLE).lookup("Zorbulator gland")
    assert again == e
    assert term.lookup("other thing").color != e.color


def test_unknown_term_keeps_side(term):
    e = term.lookup("left zorbulator")
    assert e.custom and e.modifier == Code("SCT", LEFT, "Left") and e.type.meaning == "Zorbulator"
    assert e.name == "left zorbulator"


@pytest.mark.parametrize("bad", ["", "   ", "\t\n", None])
def test_blank_term_raises(term, bad):
    with pytest.raises(ValueError, match="non-empty"):
        term.lookup(bad)
    assert term.find(bad) is None


def test_side_without_base_is_unknown(term):
    assert term.find("left") is None
    assert term.find("left liver") is None  # the liver has no laterality variants
    assert term.find("left middle lobe") is None  # only the right lung has a middle lobe


# --------------------------------------------------------------------------- Slicer strings
def test_slicer_string_format(term):
    assert term.lookup("kidney_left").to_slicer_string() == (
        "Segmentation category and type - MIMOAssistant~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^7771000^Left~~^^~^^")
    assert term.lookup("kidney_cyst_right").to_slicer_string() == (
        "Segmentation category and type - MIMOAssistant~SCT^49755003^Morphologically Altered Structure"
        "~SCT^367643001^Cyst~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~SCT^24028007^Right")
    general = term.lookup("liver").to_slicer_string(
        context="Segmentation category and type - 3D Slicer General Anatomy list")
    assert general.startswith("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^")


def test_slicer_string_round_trip_all(term):
    for e in term:
        s = e.to_slicer_string()
        assert s.count("~") == 6
        back = TerminologyEntry.from_slicer_string(s, name=e.name, color=e.color)
        assert back == e, e.name


def test_from_slicer_string_general_anatomy(term):
    s = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
         "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
    e = TerminologyEntry.from_slicer_string(s)
    assert e.name == "liver" and e.type.value == "10200004" and e.modifier is None and e.region is None
    assert e.color == (128, 128, 128) and not e.custom
    assert term.find_by_code(e.type) is term.lookup("liver")
    left = TerminologyEntry.from_slicer_string(term.lookup("left lung").to_slicer_string())
    assert left.name == "left lung" and term.find_by_code(left.type, left.modifier) is term.lookup("lung_left")
    custom = term.lookup("zorbulator")
    assert TerminologyEntry.from_slicer_string(custom.to_slicer_string()).custom


@pytest.mark.parametrize("bad", ["", "just text", "ctx~SCT^1^A", "ctx~SCT^1^A~SCT^2", "a~b~c~d~e~f~g~h",
                                 "ctx~^^~SCT^2^B~^^~~^^~^^"])
def test_from_slicer_string_invalid(bad):
    with pytest.raises(ValueError):
        TerminologyEntry.from_slicer_string(bad)


def test_code_rejects_separators():
    with pytest.raises(ValueError):
        Code("SCT", "1", "a~b")
    with pytest.raises(ValueError):
        Code("SCT", "", "x")
    with pytest.raises(ValueError):
        TerminologyEntry("x", Code("SCT", "1", "a"), Code("SCT", "2", "b"), None, (0, 0, 256))


def test_custom_meaning_is_sanitized(term):
    e = term.lookup("weird~name^here " + "x" * 100)
    assert "~" not in e.type.meaning and "^" not in e.type.meaning and len(e.type.meaning) <= 64
    TerminologyEntry.from_slicer_string(e.to_slicer_string())  # parseable


# --------------------------------------------------------------------------- free text
def test_find_terms_example(term):
    text = "Segment the left kidney and the liver."
    found = term.find_terms(text)
    assert [(s, e, x.name) for s, e, x in found] == [(12, 23, "left kidney"), (32, 37, "liver")]
    assert text[12:23] == "left kidney"
    assert found[0][2] is term.lookup("left kidney")


def test_find_terms_longest_non_overlapping(term):
    text = "right kidney cyst and kidney; the right upper lobe of lung, both lungs and COVID-19 infection"
    got = [(text[s:e], x.name) for s, e, x in term.find_terms(text)]
    assert got == [("right kidney cyst", "right kidney cyst"), ("kidney", "kidney"),
                   ("right upper lobe of lung", "right upper lobe of lung"), ("both lungs", "lungs"),
                   ("COVID-19 infection", "COVID-19 infection")]


def test_find_terms_punctuation_and_underscores(term):
    text = "Check the kidney. Left lung too, and kidney_left; vertebrae_L1!"
    got = [(text[s:e], x.name) for s, e, x in term.find_terms(text)]
    assert got == [("kidney", "kidney"), ("Left lung", "left lung"), ("kidney_left", "left kidney"),
                   ("vertebrae_L1", "L1 vertebra")]


def test_find_terms_measurement_words(term):
    assert term.find_terms("a lesion with radius 5 mm") == [(2, 8, term.lookup("lesion"))]
    got = term.find_terms("segment the left radius")
    assert [x.name for _, _, x in got] == ["left radius"]
    assert term.find_terms("") == [] and term.find_terms("nothing here") == []


# --------------------------------------------------------------------------- JSON, table and export
def test_to_dict_round_trip(term):
    for name in ("left kidney", "COVID-19 infection", "zorbulator"):
        e = term.lookup(name)
        d = json.loads(json.dumps(e.to_dict()))
        assert d["slicer_terminology"] == e.to_slicer_string()
        assert TerminologyEntry.from_dict(d) == e
    d = term.lookup("left kidney").to_dict()
    assert d["type"] == {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}
    assert d["modifier"]["value"] == LEFT and d["color"] == [185, 102, 83] and d["custom"] is False


def test_default_is_cached_and_consistent(term):
    assert Terminology.default() is term
    names = term.names()
    assert len(names) == len(term) == len(set(n.lower() for n in names))
    assert len(term) > 400
    assert "left kidney" in names and "liver" in names
    assert "liver" in term and "zorbulator" not in term


def _verhoeff_ok(number: str) -> bool:
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
         [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
         [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
    c = 0
    for i, ch in enumerate(reversed(number)):
        c = d[c][p[i % 8][int(ch)]]
    return c == 0


def test_table_integrity(term):
    """Every SNOMED CT id has a valid Verhoeff check digit and a concept partition; custom entries are few."""
    raw = json.loads(DEFAULT_TABLE.read_text(encoding="utf-8"))
    assert raw["format"] == "mimo-terminology"
    for ent in raw["entries"]:
        assert ent["source"], ent["name"]
        assert ent["category"] in raw["categories"]
        assert ent.get("custom", False) or ent["type"]["scheme"] in ("SCT", "DCM")
    sct = set()
    for e in term:
        for c in (e.category, e.type, e.modifier, e.region, e.region_modifier):
            if c is not None and c.scheme == "SCT":
                sct.add(c.value)
    assert len(sct) > 250
    for value in sct:
        assert value.isdigit() and _verhoeff_ok(value), value
        assert value[-3:-1] in ("00", "10"), value  # concept id partition
    custom = sorted(e["name"] for e in raw["entries"] if e.get("custom"))
    assert custom == ["cell membranes", "intervertebral disc"]


def test_normalize_term():
    assert normalize_term("  Kidney_LEFT ") == "kidney left"
    assert normalize_term("COVID-19 infection") == "covid 19 infection"
    assert normalize_term("left and right lung") == "bilateral lung"


def test_term_json_structure(term, tmp_path):
    path = tmp_path / "SegmentationCategoryTypeModifier-MIMOAssistant.term.json"
    term.write_term_json(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["SegmentationCategoryTypeContextName"] == SEGMENTATION_CONTEXT
    assert doc["@schema"] == TERM_JSON_SCHEMA
    cats = doc["SegmentationCodes"]["Category"]
    assert {c["CodeValue"] for c in cats} == {"123037004", "85756007", "49755003", "260787004", "91720002"}
    labels = []
    for cat in cats:
        for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning", "showAnatomy", "Type"):
            assert key in cat
        for typ in cat["Type"]:
            for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning", "3dSlicerLabel",
                        "recommendedDisplayRGBValue"):
                assert key in typ, typ
            labels.append(typ["3dSlicerLabel"])
            for mod in typ.get("Modifier", []):
                for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning", "3dSlicerLabel",
                            "recommendedDisplayRGBValue"):
                    assert key in mod
                labels.append(mod["3dSlicerLabel"])
    assert len(labels) == len(set(labels))
    anat = next(c for c in cats if c["CodeValue"] == "123037004")
    assert anat["showAnatomy"] is False
    kidney = next(t for t in anat["Type"] if t["CodeValue"] == "64033007")
    assert kidney["3dSlicerLabel"] == "kidney"
    mods = {m["CodeValue"]: m["3dSlicerLabel"] for m in kidney["Modifier"]}
    assert mods == {LEFT: "left kidney", RIGHT: "right kidney", BOTH: "kidneys"}
    liver = next(t for t in anat["Type"] if t["CodeValue"] == "10200004")
    assert liver["recommendedDisplayRGBValue"] == [221, 130, 101]
    # every entry without an anatomic region is in the file under its category/type/modifier
    for e in term:
        if e.region is not None:
            continue
        cat = next(c for c in cats if c["CodeValue"] == e.category.value)
        typ = next(t for t in cat["Type"] if (t["CodingSchemeDesignator"], t["CodeValue"]) ==
                   (e.type.scheme, e.type.value))
        if e.modifier is None:
            assert typ["3dSlicerLabel"] == e.name
        else:
            assert any(m["CodeValue"] == e.modifier.value and m["3dSlicerLabel"] == e.name
                       for m in typ["Modifier"])


# --------------------------------------------------------------------------- 3D Slicer's own logic
@pytest.fixture(scope="module")
def slicer_logic(term, tmp_path_factory):
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML/logic in Python) not installed")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("this slicer module has no vtkSlicerTerminologiesModuleLogic")
    share = tmp_path_factory.mktemp("terminologies")
    path = share / "SegmentationCategoryTypeModifier-MIMOAssistant.term.json"
    term.write_term_json(path)
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    # slicer-core ships no *.term.json: point the share directory at ours; no MRML scene is needed
    # for loading contexts and (de)serializing entries.
    logic.SetModuleShareDirectory(str(share))
    context = logic.LoadTerminologyFromFile(str(path))
    return slicer, logic, context


def test_slicer_loads_term_json(slicer_logic, term):
    slicer, logic, context = slicer_logic
    assert context == SEGMENTATION_CONTEXT
    assert logic.GetNumberOfCategoriesInTerminology(context) == 5
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, "left kidney", entry)
    assert logic.SerializeTerminologyEntry(entry) == term.lookup("left kidney").to_slicer_string()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, "liver", entry)
    assert entry.GetTypeObject().GetCodeValue() == "10200004"
    assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == (221, 130, 101)
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, "cell membranes", entry)
    assert entry.GetTypeObject().GetCodingSchemeDesignator() == CUSTOM_SCHEME


def test_slicer_parses_our_strings(slicer_logic, term):
    slicer, logic, _ = slicer_logic
    for e in list(term) + [term.lookup("zorbulator"), term.lookup("left zorbulator")]:
        s = e.to_slicer_string()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(s, entry), s
        assert entry.GetTerminologyContextName() == SEGMENTATION_CONTEXT
        assert entry.GetTypeObject().GetCodeValue() == e.type.value
        assert entry.GetCategoryObject().GetCodeValue() == e.category.value
        assert logic.SerializeTerminologyEntry(entry) == s


def test_slicer_segment_terminology_tag(slicer_logic, term):
    slicer, logic, _ = slicer_logic
    expected = term.lookup("kidney_cyst_left")
    segment = slicer.vtkSegment()
    segment.SetName(expected.name)
    segment.SetColor(*expected.color_float)
    segment.SetTerminology(expected.to_slicer_string())
    tag = segment.GetTerminology()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(tag, entry)
    assert entry.GetTypeObject().GetCodeValue() == "367643001"
    assert entry.GetRegionContextName() == REGION_CONTEXT
    assert entry.GetRegionObject().GetCodeValue() == "64033007"
    assert entry.GetRegionModifierObject().GetCodeValue() == LEFT
    parsed = TerminologyEntry.from_slicer_string(tag, name=segment.GetName(), color=expected.color)
    assert parsed == expected
