"""Question and answer phrasings for every perspective and question type (at least five each).

Templates are ``str.format`` strings. Grammar keys come from :func:`grammar` (number agreement
for plural names such as "lungs" or "cell nuclei"); context keys are filled by the generator:
``img`` ("image" or "slice"), ``mod`` (modality name), ``a_mod`` ("a breast ultrasound image"),
``pnoun`` ("box", "points", "scribble", "outline"), ``in_prompt`` ("in the box"), ``marked``
("boxed"), ``cat`` (category noun), ``clue``/``pred`` (knowledge-base predicates, which may
hold ``[[name]]`` references), ``neighbors``, ``label``, ``plane``. In answers ``[[{t}]]`` marks
the grounded target; the generator turns it into ``<p>name</p><SEG>``.
"""

from __future__ import annotations

from typing import Mapping


def grammar(name: str, plural: bool, article: str) -> dict[str, str]:
    """Number agreement for one structure name."""
    a_t = f"{article} {name}".strip() if article else name
    return {
        "t": name,
        "a_t": a_t,
        "is": "are" if plural else "is",
        "was": "were" if plural else "was",
        "it": "them" if plural else "it",
        "it_l": "they" if plural else "it",
        "shows": "show" if plural else "shows",
        "It": "They" if plural else "It",
        "its": "their" if plural else "its",
        "this_is": "These are" if plural else "This is",
        "that_is": "Those are" if plural else "That is",
        "it_is": "They are" if plural else "It is",
        "lie": "lie" if plural else "lies",
        "does": "do" if plural else "does",
        "belongs": "belong" if plural else "belongs",
        "appears": "appear" if plural else "appears",
        "matters": "matter" if plural else "matters",
        "is_there": "Are there" if plural else "Is there",
        "there_is": "there are" if plural else "there is",
        "is_any": "Are there any" if plural else "Is there any",
    }


def fill(template: str, values: Mapping[str, str]) -> str:
    text = template.format_map(values)
    return text[0].upper() + text[1:] if text and text[0].isalpha() else text


# ---------------------------------------------------------------- 1. text-guided segmentation
TEXT_SEG_Q = [
    "Segment the {t}.",
    "Please segment the {t} in this {img}.",
    "Can you segment the {t}?",
    "Outline the {t}.",
    "Show me where the {t} {is}.",
    "Highlight the {t} in this {img}.",
    "Draw a mask of the {t}.",
    "Delineate the {t}.",
    "Find and segment the {t}.",
    "Could you mark the {t} for me?",
    "I need a segmentation of the {t}.",
    "Give me the mask of the {t} in this {img}.",
    "Locate the {t} and segment {it}.",
    "Where {is} the {t}? Please mark {it}.",
]
TEXT_SEG_A = [
    "[[{t}]]",
    "[[{t}]].",
    "Here {is} the [[{t}]].",
    "Sure, here {is} the [[{t}]].",
    "The [[{t}]] {is} segmented.",
    "I have outlined the [[{t}]].",
    "This is the segmentation of the [[{t}]].",
    "The [[{t}]] {is} shown here.",
]
TEXT_SEG_MULTI_Q = [
    "Segment {list}.",
    "Please segment {list} in this {img}.",
    "Outline {list}.",
    "Show me {list}.",
    "Find {list} and give their masks.",
    "Can you delineate {list}?",
    "Highlight {list} in this {img}.",
]
TEXT_SEG_MULTI_A = [
    "{seg_bare}.",
    "{seg_bare}",
    "Here are {seg_list}.",
    "Sure: {seg_list}.",
    "I have segmented {seg_list}.",
    "This {img} shows {seg_list}.",
    "The requested structures are {seg_list}.",
]

# ---------------------------------------------------------------- 2. visual-prompt-aware perception
PROMPT_WORDS = {
    # kind: (noun singular, noun plural, "in the box" phrases, "you marked" verbs)
    "box": ("box", "box", ["in the box", "inside the box", "within the bounding box"], ["boxed", "drew a box around", "put a box on"]),
    "point": ("point", "points", ["at the marked point", "at the point I clicked"], ["clicked on", "pointed at", "marked with a point"]),
    "scribble": ("scribble", "scribble", ["under the scribble", "under my scribble", "marked by the scribble"], ["scribbled on", "drew over", "marked with a scribble"]),
    "lasso": ("outline", "outline", ["inside the outline", "inside the lasso", "within the region I circled"], ["circled", "drew around", "outlined"]),
}
PERCEPTION_Q = [
    "What is this?",
    "What is the structure marked by the {pnoun}?",
    "What did I mark? Please segment it.",
    "Can you tell me what this is and segment it?",
    "Identify the region I {marked}.",
    "Name and segment what I {marked}.",
    "What is the object indicated by the {pnoun}?",
    "What is {in_prompt}?",
]
PERCEPTION_A = [
    "{this_is} the [[{t}]].",
    "{it_is} the [[{t}]].",
    "{that_is} the [[{t}]].",
    "The {pnoun} marks the [[{t}]].",
    "You marked the [[{t}]].",
    "[[{t}]]",
    "The marked region {is} the [[{t}]].",
]

# ---------------------------------------------------------------- 3. reasoning segmentation (no prompt)
REASONING_Q = {
    "clue": [
        "Which {cat} in this {img} {clue}?",
        "Which {cat} here {clue}? Please segment {it}.",
        "Find the {cat} that {clue}.",
        "Segment the {cat} in this {img} that {clue}.",
        "Can you show me the {cat} that {clue}?",
        "In this {img}, which {cat} {clue}? Outline {it}.",
    ],
    "function": [
        "What does the {t} do? Show {it} in the {img}.",
        "What is the function of the {t}? Please segment {it}.",
        "Segment the {t} and explain {its} function.",
        "What role does the {t} play? Highlight {it}.",
        "Explain what the {t} {is} for and outline {it}.",
        "Point out the {t} and tell me {its} function.",
    ],
    "location": [
        "Where is the {t} located? Segment {it}.",
        "Describe the location of the {t} and outline {it}.",
        "Where in the body {is} the {t}? Show {it} here.",
        "Segment the {t} and tell me where {it_l} {lie}.",
        "Can you find the {t} and explain where {it_l} {is} found?",
    ],
    "what": [
        "What is the {t}? Show {it} in this {img}.",
        "Explain what the {t} {is} and segment {it}.",
        "Tell me about the {t} and mark {it}.",
        "Segment the {t} and describe what {it_l} {is}.",
        "Can you outline the {t} and say what {it_l} {is}?",
    ],
    "system": [
        "Which body system does the {t} belong to? Segment {it}.",
        "The {t} {is} part of which organ system? Please outline {it}.",
        "To which system {does} the {t} belong? Show {it}.",
        "Segment the {t} and name the system {it_l} {belongs} to.",
        "What organ system includes the {t}? Highlight {it}.",
    ],
    "appearance": [
        "How does the {t} look on {mod}? Segment {it}.",
        "Describe the appearance of the {t} in this {img} and outline {it}.",
        "What does the {t} look like on {mod}? Show {it}.",
        "Segment the {t} and describe how {it_l} {appears} on {mod}.",
        "How can I recognise the {t} on {mod}? Mark {it}.",
    ],
    "significance": [
        "Why is the {t} clinically important? Segment {it}.",
        "What is the clinical significance of the {t}? Outline {it}.",
        "Segment the {t} and explain why {it_l} {matters} clinically.",
        "What diseases or problems can involve the {t}? Show {it}.",
        "Highlight the {t} and tell me why doctors look at {it}.",
    ],
    "part_of": [
        "Which larger structure is the {t} part of? Segment {it}.",
        "The {t} {is} part of what? Show {it}.",
        "Segment the {t} and say which larger structure {it_l} {belongs} to.",
        "What is the {t} a part of? Outline {it}.",
        "Highlight the {t} and name the larger structure that contains {it}.",
    ],
    "adjacent": [
        "Which structures next to the {t} can be seen in this {img}? Segment them.",
        "Segment the {t} and the neighbouring structures visible here.",
        "What lies next to the {t} in this {img}?",
        "Show the {t} together with the structures around {it} that are visible.",
        "Which neighbours of the {t} appear in this {img}? Outline them all.",
    ],
}
REASONING_A = {
    "clue": [
        "The [[{t}]] {clue}.",
        "{this_is} the [[{t}]], which {clue}.",
        "The {cat} you are asking about {is} the [[{t}]]: {it_l} {clue}.",
        "{it_is} the [[{t}]]. {It} {clue}.",
        "The [[{t}]], shown here, {clue}.",
    ],
    "generic": [  # function / location / what / significance: {pred}
        "The [[{t}]] {pred}.",
        "Here {is} the [[{t}]]. {It} {pred}.",
        "The [[{t}]], shown here, {pred}.",
        "{this_is} the [[{t}]]; {it_l} {pred}.",
        "The segmented [[{t}]] {pred}.",
    ],
    "system": [
        "The [[{t}]] {belongs} to {system}.",
        "The [[{t}]] {is} part of {system}.",
        "Here {is} the [[{t}]], which {belongs} to {system}.",
        "{this_is} the [[{t}]]; {it_l} {is} part of {system}.",
        "The [[{t}]] {is} a part of {system}.",
    ],
    "part_of": [
        "The [[{t}]] {is} part of {part_of}.",
        "The [[{t}]] {belongs} to {part_of}.",
        "Here {is} the [[{t}]], which {is} part of {part_of}.",
        "{this_is} the [[{t}]]; {it_l} {is} part of {part_of}.",
        "The segmented [[{t}]] {is} a part of {part_of}.",
    ],
    "appearance": [
        "On {mod}, the [[{t}]] {pred}.",
        "Here {is} the [[{t}]]. On {mod} {it_l} {pred}.",
        "The [[{t}]] {pred}.",
        "{this_is} the [[{t}]]; on {mod} {it_l} {pred}.",
        "The segmented [[{t}]] {pred}.",
    ],
    "adjacent": [
        "The [[{t}]] {lie} next to {neighbors}.",
        "Next to the [[{t}]], this {img} shows {neighbors}.",
        "Here {is} the [[{t}]]; the neighbouring structures visible are {neighbors}.",
        "The [[{t}]] {is} adjacent to {neighbors}.",
        "Around the [[{t}]] you can see {neighbors}.",
    ],
}
#: The second sentence added to some "clue" answers.
FOLLOW_UP = ["{It} {pred}.", "In addition, {it_l} {pred}.", "Besides, {it_l} {pred}."]

# ---------------------------------------------------------------- 4. prompt-assisted reasoning
PROMPT_REASONING_Q = {
    "function": [
        "What does the structure {in_prompt} do?",
        "What is the function of what I {marked}?",
        "Explain the role of the structure I {marked}.",
        "What is the marked structure for? Segment it.",
        "Tell me what the structure {in_prompt} does and outline it.",
    ],
    "location": [
        "Where in the body does the structure {in_prompt} lie?",
        "Describe where the structure I {marked} is located.",
        "What is the structure {in_prompt}, and where is it found in the body?",
        "Name the structure I {marked} and describe its location.",
        "Identify what is {in_prompt} and explain where it lies.",
    ],
    "what": [
        "What is the structure {in_prompt}? Explain.",
        "Tell me what I {marked} and describe it.",
        "What kind of structure is {in_prompt}?",
        "Identify and describe the structure I {marked}.",
        "Explain what is {in_prompt} and segment it.",
    ],
    "significance": [
        "Why would a doctor care about the structure {in_prompt}?",
        "What is the clinical significance of what I {marked}?",
        "Name the structure I {marked} and explain why it matters clinically.",
        "Is the structure {in_prompt} clinically important? Explain.",
        "What diseases can involve the structure I {marked}?",
    ],
    "system": [
        "Which body system does the structure {in_prompt} belong to?",
        "What organ system is the structure I {marked} part of?",
        "Name the structure {in_prompt} and its organ system.",
        "To which system does what I {marked} belong?",
        "Identify the structure I {marked} and the system it belongs to.",
    ],
    "pathology": [
        "Is the lesion {in_prompt} benign or malignant?",
        "Is the lesion I {marked} benign or malignant?",
        "What is the pathology of the lesion {in_prompt}?",
        "Tell me whether the lesion I {marked} is benign or malignant, and segment it.",
        "Classify the lesion {in_prompt} as benign or malignant.",
        "Would the lesion I {marked} be benign or malignant?",
    ],
    "diagnosis": [
        "Based on the region {in_prompt}, what is the diagnosis: COVID-19, non-COVID pneumonia or normal?",
        "What does the region I {marked} suggest: COVID-19, non-COVID pneumonia or a normal chest?",
        "Looking at what I {marked}, is this COVID-19, another pneumonia, or normal?",
        "Which diagnosis fits the region {in_prompt}: COVID-19, non-COVID pneumonia or normal?",
        "Classify this chest X-ray from the region I {marked}: COVID-19, non-COVID pneumonia or normal?",
    ],
}
PROMPT_IDENTIFY = [
    "{this_is} the [[{t}]].",
    "The {pnoun} marks the [[{t}]].",
    "You {marked} the [[{t}]].",
    "{that_is} the [[{t}]].",
    "The marked region {is} the [[{t}]].",
]
PROMPT_FACT = {
    "generic": ["{It} {pred}.", "{this_cat} {pred}."],
    "system": ["{It} {belongs} to {system}.", "{It} {is} part of {system}."],
}
PATHOLOGY_A = [
    "The [[{t}]] {in_prompt} is {label}.",
    "It is {label}: the [[{t}]] you {marked} is {label}.",
    "The marked [[{t}]] is {label}.",
    "This [[{t}]] is {label}.",
    "{Label}. The [[{t}]] {in_prompt} is {label}.",
    "The lesion you {marked}, the [[{t}]], is {label}.",
]
DIAGNOSIS_A = {
    "COVID-19": [
        "The marked [[{t}]] {shows} findings of COVID-19; the diagnosis is COVID-19.",
        "COVID-19: the [[{t}]] {in_prompt} {shows} COVID-19 pneumonia.",
        "The [[{t}]] you {marked} {shows} COVID-19 pneumonia.",
        "This is COVID-19. The [[{t}]] {in_prompt} {is} affected.",
        "The diagnosis is COVID-19, seen in the marked [[{t}]].",
    ],
    "non-COVID pneumonia": [
        "The marked [[{t}]] {shows} pneumonia that is not caused by COVID-19.",
        "Non-COVID pneumonia: the [[{t}]] {in_prompt} {shows} pneumonia of another cause.",
        "The [[{t}]] you {marked} {shows} non-COVID pneumonia.",
        "This is non-COVID pneumonia, seen in the marked [[{t}]].",
        "The diagnosis is non-COVID pneumonia; the [[{t}]] {in_prompt} {is} affected.",
    ],
    "normal": [
        "The marked [[{t}]] {is} normal; there is no sign of pneumonia.",
        "Normal: the [[{t}]] {in_prompt} {shows} no sign of pneumonia.",
        "The [[{t}]] you {marked} {is} normal.",
        "This chest X-ray is normal, including the marked [[{t}]].",
        "The diagnosis is normal; the [[{t}]] {is} clear.",
    ],
}

# ---------------------------------------------------------------- VQA (text only)
MODALITY_Q = [
    "What imaging modality is this?",
    "What kind of image is this?",
    "What type of image is shown here?",
    "Which imaging modality does this image come from?",
    "Identify the imaging modality of this picture.",
    "What modality is this image?",
]
MODALITY_A = [
    "This is {a_mod}.",
    "It is {a_mod}.",
    "The image is {a_mod}.",
    "{a_mod}.",
    "This image is {a_mod}.",
]
TECHNIQUE_Q = [
    "How was this image acquired?",
    "Which imaging technique produced this image?",
    "What technique was used to obtain this image?",
    "With what kind of imaging was this picture taken?",
    "What acquisition method does this image come from?",
]
TECHNIQUE_A = [
    "It was acquired with {technique}.",
    "With {technique}.",
    "This image was obtained with {technique}; it is {a_mod}.",
    "The technique is {technique}.",
    "{technique}; this is {a_mod}.",
]
PRESENCE_Q = {
    "lesion": [
        "{is_there} {a_t} in this {img}?",
        "Does this {img} show {a_t}?",
        "Can you see {a_t} here?",
        "{is_any} {t} in this {img}?",
        "Is there any sign of {a_t} in this {img}?",
    ],
    "anatomy": [
        "Is the {t} visible in this {img}?",
        "Does this {img} show the {t}?",
        "Can you see the {t} in this {img}?",
        "Is the {t} present in this {img}?",
        "Does the {t} appear in this {img}?",
    ],
}
PRESENCE_YES = {
    "lesion": [
        "Yes, {there_is} {a_t} in this {img}.",
        "Yes.",
        "Yes, this {img} shows {a_t}.",
        "Yes, {a_t} {is} visible here.",
        "Yes, I can see {a_t} in this {img}.",
    ],
    "anatomy": [
        "Yes, the {t} {is} visible in this {img}.",
        "Yes.",
        "Yes, this {img} shows the {t}.",
        "Yes, the {t} can be seen here.",
        "Yes, the {t} {is} present in this {img}.",
    ],
}
PRESENCE_NO = {
    "lesion": [
        "No, {there_is} no {t} in this {img}.",
        "No.",
        "No, this {img} does not show {a_t}.",
        "No, I cannot see {a_t} in this {img}.",
        "No, no {t} {is} visible in this {img}.",
    ],
    "anatomy": [
        "No, the {t} {is} not visible in this {img}.",
        "No.",
        "No, this {img} does not show the {t}.",
        "No, the {t} cannot be seen here.",
        "No, the {t} {is} not present in this {img}.",
    ],
}
PATHOLOGY_Q = [
    "Is the {t} in this image benign or malignant?",
    "What is the pathology of this {t}?",
    "Is this {t} benign or malignant?",
    "Would you classify the {t} in this image as benign or malignant?",
    "Classify the {t} shown here as benign or malignant.",
]
PATHOLOGY_VQA_A = [
    "It is {label}.",
    "The {t} is {label}.",
    "{Label}.",
    "This {t} is {label}.",
    "The {t} in this image is {label}.",
]
NORMAL_Q = [
    "Is this {a_mod_short} normal?",
    "Does this {a_mod_short} look normal?",
    "Would you call this {a_mod_short} normal?",
    "Is this a normal {a_mod_short}?",
    "Is the {a_mod_short} normal?",
]
NORMAL_YES = [
    "Yes, it is normal: no {lesion} is visible.",
    "Yes.",
    "Yes, this {a_mod_short} is normal.",
    "Yes, there is no {lesion} in this image.",
    "Yes, it looks normal.",
]
NORMAL_NO = [
    "No, it shows {finding}.",
    "No.",
    "No, this {a_mod_short} is not normal: it shows {finding}.",
    "No, there is {finding} in this image.",
    "No, it is abnormal because of {finding}.",
]
DIAGNOSIS_Q = [
    "What is the diagnosis for this chest X-ray: COVID-19, non-COVID pneumonia or normal?",
    "Does this chest X-ray show COVID-19, non-COVID pneumonia, or is it normal?",
    "Classify this chest radiograph as COVID-19, non-COVID pneumonia or normal.",
    "Which diagnosis fits this chest X-ray: COVID-19, non-COVID pneumonia or normal?",
    "What does this chest X-ray show: COVID-19, another pneumonia, or a normal chest?",
]
DIAGNOSIS_VQA_A = {
    "COVID-19": ["COVID-19.", "The diagnosis is COVID-19.", "This chest X-ray shows COVID-19 pneumonia.", "It shows COVID-19.", "COVID-19 pneumonia."],
    "non-COVID pneumonia": ["Non-COVID pneumonia.", "The diagnosis is non-COVID pneumonia.", "This chest X-ray shows pneumonia that is not caused by COVID-19.",
                            "It shows a pneumonia other than COVID-19.", "Pneumonia, not caused by COVID-19."],
    "normal": ["Normal.", "The diagnosis is normal.", "This chest X-ray is normal.", "It is a normal chest X-ray.", "Normal: there is no sign of pneumonia."],
}
PLANE_Q = [
    "In which plane is this slice?",
    "Is this an axial, coronal or sagittal image?",
    "What is the orientation of this slice?",
    "Which anatomical plane does this image show?",
    "Is this slice axial, coronal or sagittal?",
]
PLANE_A = [
    "This is {an_plane} slice.",
    "{plane}.",
    "It is {an_plane} image.",
    "The slice is in the {plane} plane.",
    "This image shows the {plane} plane.",
]

# ---------------------------------------------------------------- negatives (no <SEG>)
NEGATIVE_Q = TEXT_SEG_Q + [
    "{is_there} {a_t} in this {img}? If so, segment {it}.",
    "Find the {t} and outline {it}.",
]
NEGATIVE_A = {
    "lesion": [
        "There is no {t} in this {img}, so there is nothing to segment.",
        "I cannot find {a_t} in this {img}.",
        "No {t} {is} visible in this {img}.",
        "This {img} does not contain {a_t}.",
        "The {t} {is} not present in this {img}; no mask can be given.",
    ],
    "anatomy": [
        "The {t} {is} not visible in this {img}, so there is nothing to segment.",
        "I cannot find the {t} in this {img}.",
        "The {t} {is} not present in this {img}.",
        "This {img} does not show the {t}.",
        "The {t} {does} not appear in this {img}; no mask can be given.",
    ],
}
#: Reasons added when the absence follows from the kind of image (another body region or scale).
NEGATIVE_REASON = [
    "This is {a_mod}, which does not show {a_t}.",
    "{a_mod_cap} like this one does not contain {a_t}.",
    "It is {a_mod}; {a_t} would not appear in it.",
    "This {img} is {a_mod}, so {a_t} cannot be seen in it.",
    "{a_t_cap} {is} not found in {a_mod_plural}.",
]
NEGATIVE_CLUE_A = [
    "The [[{t}]], which {clue}, {is} not visible in this {img}.",
    "No {cat} in this {img} {clue}: the [[{t}]] {is} not present here.",
    "The {cat} that {clue} would be the [[{t}]], but {it_l} {is} not visible in this {img}.",
    "The [[{t}]] {clue}, but {it_l} {does} not appear in this {img}.",
    "This {img} does not show the [[{t}]], the {cat} that {clue}.",
]

#: Every template family, for the test that each has at least five phrasings.
ALL_FAMILIES: dict[str, list[str]] = {
    "text_seg.q": TEXT_SEG_Q, "text_seg.a": TEXT_SEG_A, "text_seg_multi.q": TEXT_SEG_MULTI_Q, "text_seg_multi.a": TEXT_SEG_MULTI_A,
    "perception.q": PERCEPTION_Q, "perception.a": PERCEPTION_A,
    **{f"reasoning.q.{k}": v for k, v in REASONING_Q.items()},
    **{f"reasoning.a.{k}": v for k, v in REASONING_A.items()},
    **{f"prompt_reasoning.q.{k}": v for k, v in PROMPT_REASONING_Q.items()},
    "prompt_reasoning.a.identify": PROMPT_IDENTIFY, "prompt_reasoning.a.pathology": PATHOLOGY_A,
    **{f"prompt_reasoning.a.diagnosis.{k}": v for k, v in DIAGNOSIS_A.items()},
    "vqa.modality.q": MODALITY_Q, "vqa.modality.a": MODALITY_A, "vqa.technique.q": TECHNIQUE_Q, "vqa.technique.a": TECHNIQUE_A,
    **{f"vqa.presence.q.{k}": v for k, v in PRESENCE_Q.items()},
    **{f"vqa.presence.yes.{k}": v for k, v in PRESENCE_YES.items()},
    **{f"vqa.presence.no.{k}": v for k, v in PRESENCE_NO.items()},
    "vqa.pathology.q": PATHOLOGY_Q, "vqa.pathology.a": PATHOLOGY_VQA_A,
    "vqa.normal.q": NORMAL_Q, "vqa.normal.yes": NORMAL_YES, "vqa.normal.no": NORMAL_NO,
    "vqa.diagnosis.q": DIAGNOSIS_Q, **{f"vqa.diagnosis.a.{k}": v for k, v in DIAGNOSIS_VQA_A.items()},
    "vqa.plane.q": PLANE_Q, "vqa.plane.a": PLANE_A,
    "negative.q": NEGATIVE_Q, **{f"negative.a.{k}": v for k, v in NEGATIVE_A.items()},
    "negative.reason": NEGATIVE_REASON, "negative.clue.a": NEGATIVE_CLUE_A,
}
