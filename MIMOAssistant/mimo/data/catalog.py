"""What the builder knows about datasets: modality names, image domains and certain absences.

A *domain* is the kind of image (breast ultrasound, chest X-ray, colonoscopy, ...). It names
the image in answers ("This is a breast ultrasound image.") and lists structures that can never
be in such an image (a polyp on a breast ultrasound, a fetal head on a chest X-ray): these are
the negatives asked for on it. The lists are deliberately short and conservative: nothing that
could appear, even rarely (no "lungs" on breast ultrasound, where the pleura can show; no
"breast lesion" on chest X-rays, which project the breasts; no organ-level lesion on
histopathology tiles, which may come from those organs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    a_mod: str  # "a breast ultrasound image"
    short: str  # "breast ultrasound"
    plural: str  # "breast ultrasound images"
    technique: str  # "ultrasound"
    negatives: tuple[str, ...] = ()


DOMAINS: dict[str, Domain] = {
    "gi_endoscopy": Domain("a gastrointestinal endoscopy image", "endoscopy image", "gastrointestinal endoscopy images",
                           "endoscopy, a camera inside the gastrointestinal tract",
                           ("breast lesion", "thyroid nodule", "fetal head", "retinal vessels", "lungs")),
    "colonoscopy": Domain("a colonoscopy image", "colonoscopy image", "colonoscopy images", "colonoscopy, an endoscopic camera inside the colon",
                          ("breast lesion", "thyroid nodule", "fetal head", "retinal vessels", "lungs")),
    "breast_us": Domain("a breast ultrasound image", "breast ultrasound", "breast ultrasound images", "ultrasound",
                        ("polyp", "fetal head", "retinal vessels", "thyroid nodule")),
    "thyroid_us": Domain("a thyroid ultrasound image", "thyroid ultrasound", "thyroid ultrasound images", "ultrasound",
                         ("polyp", "fetal head", "retinal vessels", "breast lesion")),
    "fetal_us": Domain("a fetal ultrasound image", "fetal ultrasound", "fetal ultrasound images", "ultrasound",
                       ("polyp", "breast lesion", "thyroid nodule", "lungs")),
    "chest_xray": Domain("a chest X-ray", "chest X-ray", "chest X-rays", "X-ray radiography",
                         ("polyp", "fetal head", "retinal vessels")),
    "fundus": Domain("a colour fundus photograph of the retina", "fundus photograph", "fundus photographs", "fundus photography",
                     ("polyp", "fetal head", "lungs", "breast lesion", "thyroid nodule")),
    "cell_microscopy": Domain("a light microscopy image of cells", "microscopy image", "microscopy images of cells", "light microscopy",
                              ("polyp", "fetal head", "lungs", "retinal vessels")),
    "histopathology": Domain("an H&E-stained histopathology image", "histopathology image", "histopathology images",
                             "brightfield microscopy of an H&E-stained tissue section", ("fetal head", "retinal vessels")),
    "em": Domain("an electron micrograph of neural tissue", "electron micrograph", "electron micrographs", "electron microscopy",
                 ("polyp", "fetal head", "lungs", "retinal vessels")),
}
#: Fallbacks when only the modality is known (no certain absences).
GENERIC = {
    "ultrasound": Domain("an ultrasound image", "ultrasound image", "ultrasound images", "ultrasound"),
    "X-ray": Domain("an X-ray image", "X-ray", "X-ray images", "X-ray radiography"),
    "endoscopy": Domain("an endoscopy image", "endoscopy image", "endoscopy images", "endoscopy"),
    "fundus photography": Domain("a fundus photograph", "fundus photograph", "fundus photographs", "fundus photography"),
    "microscopy": Domain("a microscopy image", "microscopy image", "microscopy images", "light microscopy"),
    "histopathology": Domain("a histopathology image", "histopathology image", "histopathology images", "brightfield microscopy of a stained tissue section"),
    "electron microscopy": Domain("an electron micrograph", "electron micrograph", "electron micrographs", "electron microscopy"),
    "CT": Domain("a CT image", "CT image", "CT images", "computed tomography (CT)"),
    "MRI": Domain("an MR image", "MR image", "MR images", "magnetic resonance imaging (MRI)"),
    "other": Domain("a medical image", "medical image", "medical images", "medical imaging"),
}

DATASET_DOMAIN = {
    "kvasir_seg": "gi_endoscopy", "cvc_clinicdb": "colonoscopy", "busi": "breast_us", "ddti": "thyroid_us", "hc18": "fetal_us",
    "covidqu": "chest_xray", "drive": "fundus", "dsb2018": "cell_microscopy", "monuseg": "histopathology", "isbi2012": "em",
}
#: Where each open2d target lives, to place datasets this module does not know by name.
TARGET_DOMAIN = {
    "polyp": "gi_endoscopy", "breast lesion": "breast_us", "thyroid nodule": "thyroid_us", "fetal head": "fetal_us",
    "COVID-19 infection": "chest_xray", "retinal vessels": "fundus", "cell membranes": "em",
}
#: Closed answers of the modality question.
MODALITY_ANSWER = {
    "ultrasound": "ultrasound", "X-ray": "x-ray", "endoscopy": "endoscopy", "fundus photography": "fundus photography",
    "microscopy": "microscopy", "histopathology": "histopathology", "electron microscopy": "electron microscopy",
    "CT": "ct", "MRI": "mri", "other": "other",
}
#: SliceImage modality codes (mimo.image.MODALITIES) per sample modality.
MODALITY_CODE = {"CT": "CT", "MRI": "MR", "ultrasound": "US", "X-ray": "XR"}


def normalise_modality(text: str) -> str:
    """Manifest modality text -> one of the sample modalities (keys of MODALITY_ANSWER)."""
    lowered = text.lower()
    for words, name in (
        (("electron",), "electron microscopy"),
        (("histopath", "h&e"), "histopathology"),
        (("microscop",), "microscopy"),
        (("fundus",), "fundus photography"),
        (("endoscop", "colonoscop"), "endoscopy"),
        (("x-ray", "xray", "radiograph", "cxr"), "X-ray"),
        (("ultrasound", "sonograph", "us"), "ultrasound"),
        (("ct", "computed tomography"), "CT"),
        (("mr", "mri", "magnetic"), "MRI"),
    ):
        if any(lowered == w or lowered.startswith(w + " ") or (len(w) > 3 and w in lowered) for w in words):
            return name
    return "other"


def dataset_domain(dataset: str, modality: str, targets: set[str]) -> str | None:
    """The domain of a manifest dataset: by name, else by its targets (matching the modality)."""
    if dataset in DATASET_DOMAIN:
        return DATASET_DOMAIN[dataset]
    expected = {
        "gi_endoscopy": "endoscopy", "breast_us": "ultrasound", "thyroid_us": "ultrasound", "fetal_us": "ultrasound",
        "chest_xray": "X-ray", "fundus": "fundus photography", "em": "electron microscopy",
    }
    for target in sorted(targets):
        domain = TARGET_DOMAIN.get(target)
        if domain and expected.get(domain) == modality:
            return domain
    if "cell nuclei" in targets:
        return {"histopathology": "histopathology", "microscopy": "cell_microscopy"}.get(modality)
    if "lungs" in targets and modality == "X-ray":
        return "chest_xray"
    return None


def domain_info(domain: str | None, modality: str) -> Domain:
    if domain in DOMAINS:
        return DOMAINS[domain]
    return GENERIC.get(modality, GENERIC["other"])
