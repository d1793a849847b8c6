"""Held-out user phrasings for evaluating the assistant.

These phrasings were written independently of the training grammar: their
author did not look at the training templates while writing them.  They are
never used for training.  They exist for ``mimo-assistant eval``, which uses
them to measure how well the model copes with ways of asking that it has not
seen during training.  A test keeps them disjoint from the training grammar,
so any phrasing that turns out to collide with a training template must be
removed or reworded here rather than added to training (thirteen short ones that
the grammar also produces were removed).

Placeholders:

* ``{target}`` -- the name of one structure, singular or plural ("polyp",
  "lungs", "cell nuclei").  Templates avoid verb or pronoun agreement with it
  so that they read correctly for either.
* ``{modality}`` -- the imaging modality ("ultrasound", "CT", "endoscopy").
"""

from __future__ import annotations

# ---------------------------------------------------------------------------
# Requests to outline / segment / show one named structure (no user drawing).
# Every template holds ``{target}`` exactly once and ``{modality}`` at most once.
# ---------------------------------------------------------------------------
SEGMENT_FAMILIES: dict[str, tuple[str, ...]] = {
    "polite_request": (
        "Could you please outline the {target} for me?",
        "Would you mind marking the {target} on this {modality} image?",
        "Could you kindly trace the {target}?",
        "Please, if you can, delineate the {target} here.",
        "Would you be so kind as to segment the {target}?",
        "I'd appreciate it if you could contour the {target}.",
        "Could you do me a favour and highlight the {target}?",
        "If it's not too much trouble, please draw the outline of the {target}.",
        "Would you please shade in the {target} on this picture?",
        "Kindly mark out the {target} on the {modality} for me, thanks.",
        "Could I ask you to show the boundary of the {target}?",
        "Please would you segment out the {target} in this frame?",
    ),
    "question_form": (
        "Can you show me where the {target} can be found?",
        "Where can I see the {target} in this image?",
        "Whereabouts on this {modality} would I find the {target}?",
        "Could you point out the {target} with an outline on screen?",
        "Which region here corresponds to the {target}? Please mark it.",
        "Where exactly on this scan would the {target} sit?",
        "Can you show me the outline of the {target}?",
        "What part of this picture shows the {target}? Shade it in.",
        "Any chance you could show me the extent of the {target}?",
        "Where would the {target} be on this {modality} view?",
        "How far would the {target} extend? Show me the borders.",
    ),
    "imperative_terse": (
        "{target} mask",
        "seg {target}",
        "{target} outline pls",
        "{target} -> segment",
        "delineate {target} now",
        "{target}, outline",
        "mark {target} on {modality}",
        "need {target} seg",
        "{target} contour",
    ),
    "lowercase_no_punctuation": (
        "can you segment the {target} on this {modality}",
        "show me the {target}",
        "draw around the {target} for me",
        "highlight the {target} in this image",
        "i want the {target} outlined",
        "trace the border of the {target} please",
        "where is the outline of the {target} show me",
        "could you mark the {target} here",
        "give me a mask of the {target}",
        "segment out the {target} on this scan",
    ),
    "typos": (
        "pleese outline teh {target}",
        "can you segmnet the {target}",
        "outine the {target} plz",
        "coudl you highlihgt the {target} on this imgae?",
        "segemnt teh {target} in this {modality} scna",
        "shwo me the {target} pleaes",
        "draw arround the {target}",
        "cna you contuor the {target}?",
        "mark teh {target} for me, thnaks",
        "plaese delinaete the {target} on the imgae",
        "i ned the {target} segmneted",
        "outlien the {target} quickyl",
    ),
    "clinical_context": (
        "58-year-old with abdominal pain, CT done. Please outline the {target}.",
        "Follow-up {modality} after treatment. Could you delineate the {target} so we can compare with the prior?",
        "Routine screening study, nothing urgent. Mark the {target} for the report.",
        "Patient referred with suspected pathology; I'd like the {target} contoured before the MDT meeting.",
        "Pre-operative workup. Show me the extent of the {target}.",
        "Young female, palpable abnormality on exam. Outline the {target} on this {modality}.",
        "History of prior surgery in this region. Please trace the {target} carefully.",
        "On call tonight and short on time - just segment the {target} for me.",
        "Incidental finding on today's {modality}; can you draw the boundary of the {target}?",
        "Staging study for a known malignancy. Contour the {target}, please.",
        "Elderly man, shortness of breath, imaging just came back. Highlight the {target}.",
    ),
    "yes_no_then_outline": (
        "Can you find any {target}? If so, outline what you find.",
        "Can you see the {target} here? If yes, draw around that region.",
        "Does this {modality} show the {target}? If it does, segment that area.",
        "Check whether this image shows the {target} and, if present, mark the region.",
        "Do you find the {target} in this frame? If so, please contour that structure.",
        "Look for the {target}; if found, trace the outline.",
        "Do you have the {target} in view at all? Outline that area if so.",
        "First tell me whether you can see the {target}, then mask that region.",
        "Any sign of the {target}? If there is, shade the region in.",
        "Can the {target} be seen on this scan? If yes, delineate the boundary.",
    ),
    "need_statement": (
        "I need the {target} contoured for planning.",
        "I'd like a mask of the {target} for my measurements.",
        "What I need is an outline of the {target} on this {modality}.",
        "I require the {target} delineated for the dosimetry team.",
        "We need the {target} segmented before the tumour board.",
        "For volumetry I need the {target} traced.",
        "My workflow needs a mask of the {target} here.",
        "I'm after a contour of the {target}, nothing else.",
        "I'll need the {target} marked so I can export the region.",
        "Our registration step needs the {target} masked out first.",
        "I want to get the {target} segmented for the research dataset.",
    ),
    "educator": (
        "For my students, highlight the {target}.",
        "I'm teaching a class on {modality}; please outline the {target} so the residents can see it.",
        "Show the trainees where the {target} is by shading it.",
        "For a teaching slide, draw the boundary of the {target}.",
        "Help me demonstrate the anatomy: mark the {target} on this image.",
        "I'm preparing a lecture - could you trace the {target} for the audience?",
        "For the medical students in the room, please colour in the {target}.",
        "Let's show the juniors the {target}; outline that region clearly.",
        "As a teaching example, segment the {target} on this {modality}.",
        "For an exam question I'm writing, I need the {target} highlighted.",
    ),
    "annotator": (
        "Draw a mask around the {target} so I can refine it.",
        "Give me a first-pass segmentation of the {target}; I'll correct the edges.",
        "Pre-label the {target} on this {modality} and I'll touch it up afterwards.",
        "I'm annotating this case - rough out the {target} for me.",
        "Start the {target} label and I will fix the boundary by hand.",
        "Create an initial contour of the {target} for me to edit.",
        "Seed the annotation with a mask of the {target}, please.",
        "Auto-outline the {target} so I have something to adjust.",
        "Make a draft mask for the {target}; I'll clean up the borders.",
        "Propose a segmentation of the {target} that I can review.",
        "Fill in the {target} label on this slice so I can check it.",
    ),
    "non_native": (
        "Please you make the outline for the {target}.",
        "I want that you segment the {target} in this image.",
        "Can you to show me the {target}?",
        "Please do the marking of the {target} on the {modality}.",
        "Make for me the contour of the {target}, please.",
        "You can draw the {target}? Thank you very much.",
        "Kindly do needful and outline the {target}.",
        "I am wanting the segmentation of the {target}.",
        "Show please where stay the {target} in the picture.",
        "Help me for mark the {target} in this {modality}.",
        "Is possible to segment the {target} for me?",
    ),
    "verbose": (
        "So I've been looking at this {modality} for a while now and honestly I'm not completely sure about the anatomy, so could you go ahead and outline the {target} for me so I can get my bearings?",
        "Hi there, hope you're well. I've got this image open and what I'd really like, if at all possible, is for you to trace around the {target} as accurately as you can manage.",
        "Okay, this might be a bit of an odd request, but before I write anything up I want to make sure I'm seeing the same thing you are, so please highlight the {target} on the screen.",
        "I've had a long day and my eyes are tired, so rather than squinting at this all evening, would you just draw the border of the {target} and save me the effort?",
        "We're going through a batch of cases this afternoon, and for this one in particular the thing I care about is the {target}, so please segment that and leave everything else alone.",
        "My supervisor asked me to double-check this study, and the first step she suggested was getting a clear outline of the {target}, so could you produce that on this {modality}?",
        "Right, so, the image is loaded, the window looks okay, and now what I'd like you to do is mark out the {target} so we can carry on with the review.",
        "I'm not a radiologist, I'm actually from the physics side, but I've been asked to look at the {target} here, so an outline of that would help me a great deal.",
        "Just to give you some background, we are comparing several annotation tools, and for this test I'd like you to delineate the {target} in this image as well as you can.",
        "Before we go any further with this case, and before I forget, could you contour the {target} for me? It would make the rest of the discussion much easier.",
    ),
    "dictation_style": (
        "Assistant, outline the {target}, full stop.",
        "Segment the {target} comma thank you",
        "Next: contour {target} on the current {modality} image.",
        "Action item - delineate the {target}.",
        "Task for you, mark the {target}, then stop.",
        "Note to self and to you: trace the {target} now.",
        "Command. Highlight {target}. End.",
        "Okay assistant, next step is the {target}, outline that.",
        "New task, shade the {target} on screen.",
        "Request: mask for the {target} on this {modality} study.",
    ),
    "show_only": (
        "Show only the {target}, nothing else.",
        "Just the {target}, please - no other structures.",
        "Isolate the {target} on this {modality} image.",
        "Pick out the {target} and ignore the rest.",
        "I only care about the {target}; mask that alone.",
        "Separate the {target} from the background.",
        "Extract the {target} region for me.",
        "Cut out the {target} from this image.",
        "Single out the {target} in this picture.",
        "Leave everything else; only the {target} should be marked.",
    ),
}

# ---------------------------------------------------------------------------
# The user has drawn a box / scribble / points and asks what it is.
# No structure is named and there are no placeholders.
# ---------------------------------------------------------------------------
NAMING_FAMILIES: dict[str, tuple[str, ...]] = {
    "short_question": (
        "What is that?",
        "And this one?",
        "What am I looking at here?",
        "This is what?",
        "Name this?",
        "Identify, please?",
        "Which structure?",
        "What's in the box?",
        "Thing I marked - what is it?",
    ),
    "polite": (
        "Could you tell me what I've marked here, please?",
        "Would you mind identifying the structure I drew around?",
        "Please could you let me know what this region is?",
        "I'd be grateful if you could name the thing inside my box.",
        "Could you kindly tell me what the highlighted area shows?",
        "Would you be able to say what structure my scribble covers?",
        "If you don't mind, what is the object I've selected?",
        "Could you please identify what I've pointed at?",
        "Sorry to bother you, but what is the region I circled?",
    ),
    "lowercase_no_punctuation": (
        "what is this thing i marked",
        "what did i just draw around",
        "name the structure in my box",
        "identify what i selected",
        "what is the region i clicked on",
        "what structure is this one",
        "which organ did i mark",
    ),
    "typos": (
        "waht is this?",
        "what is thsi structre?",
        "cna you tell me waht i markd?",
        "idenitfy the thnig in the box",
        "whta did i draw arround?",
        "what is teh regoin i selceted?",
        "naem this strucutre pls",
        "wich organ is this?",
        "what is undr my scribbel?",
    ),
    "clinical": (
        "I've boxed an area that caught my eye - what does it represent?",
        "There's something here I'm unsure about; I've marked it. What is it?",
        "Can you characterise the structure I've drawn around?",
        "Reviewing this study, I marked a region - what anatomy or finding is that?",
        "The area within my selection looks abnormal to me. What would you call it?",
        "I placed points on a structure; which one is it?",
        "Help me label the region I outlined for the report.",
        "For the differential, what is the thing I've highlighted?",
        "I've drawn a rough box; tell me what's inside it clinically.",
    ),
    "identify_and_outline": (
        "Tell me what this is and then segment it properly.",
        "Identify the structure in my box and give me its mask.",
        "What is this? Also please trace its full boundary.",
        "Label the region I scribbled on and draw its exact outline.",
        "Work out what I've selected and contour the whole thing.",
        "Say what the marked structure is and show its extent.",
        "Recognise what I drew around, then refine it into a proper mask.",
        "Figure out what my points are on and segment that structure.",
    ),
    "non_native": (
        "What is this thing what I have mark?",
        "Please say me what is inside the box.",
        "This region, what it is?",
        "You can tell me the name of this what I select?",
        "Which organ is this where I put the points?",
        "Explain me what is this structure.",
        "What is call this part I have draw?",
        "I make a box, please tell me what is there.",
    ),
}

# ---------------------------------------------------------------------------
# Yes/no questions about whether ``{target}`` is present (no outline asked).
# ---------------------------------------------------------------------------
PRESENCE_FAMILIES: dict[str, tuple[str, ...]] = {
    "direct_question": (
        "Can you see the {target} in this image?",
        "Does this image show the {target}?",
        "Do you find any {target} here?",
        "Does this {modality} contain the {target}?",
        "Can the {target} be seen on this scan?",
        "Do we have the {target} in view?",
        "Would you say this frame includes the {target}?",
        "Can we see the {target} here at all?",
        "Any evidence of the {target} on this {modality}?",
    ),
    "lowercase_no_punctuation": (
        "can you see the {target}",
        "do you see any {target} on this",
        "does the image have the {target} in it",
        "got any {target} on this {modality} or not",
        "do we see the {target} in this picture",
        "any sign of the {target}",
        "does this show the {target} yes or no",
    ),
    "yes_no_explicit": (
        "Yes or no: does this image include the {target}?",
        "Just answer yes or no - can you see the {target}?",
        "Quick yes/no, any {target} on this {modality}?",
        "One word answer please: {target} present?",
        "Simple question, yes or no, does this frame include the {target}?",
        "Tell me yes or no whether this picture shows the {target}.",
        "Answer with yes or no only: do you detect the {target}?",
        "Binary answer needed - {target} visible here, yes or no?",
    ),
    "clinical": (
        "Before I report this, can you confirm whether the {target} appears on the study?",
        "Screening question: any {target} on this {modality}?",
        "I'm checking for the {target} - do you see anything suggestive?",
        "Could this image contain the {target}, or does it look clear?",
        "On this view, would you say the {target} can be seen or not?",
        "For triage: does this image contain the {target} anywhere?",
        "Any findings consistent with the {target} in this frame?",
        "Is this study positive or negative for the {target}?",
    ),
    "typos": (
        "cna you see teh {target}?",
        "dose this imgae show the {target}?",
        "any {target} in this scna?",
        "do you seee the {target} hear?",
        "do yuo see any {target} on this {modality}?",
        "can teh {target} be sene in this image?",
        "does this pictrue contian the {target}?",
        "any sgin of the {target}?",
    ),
}

# ---------------------------------------------------------------------------
# Ways to ask which imaging modality / kind of image this is.
# ---------------------------------------------------------------------------
MODALITY_QUESTIONS: tuple[str, ...] = (
    "Which imaging modality was used here?",
    "Is this a CT, an MRI, or something else?",
    "Can you tell what modality this picture comes from?",
    "Is this ultrasound or X-ray?",
    "What sort of imaging am I looking at?",
    "Which scanner produced this image?",
    "waht modalty is this?",
    "Identify the imaging technique for this study, please.",
    "Is this a photo, a microscopy slide, or a radiology scan?",
    "Do you know what kind of exam this image is from?",
    "Tell me the modality of the current image.",
    "Is this an endoscopy frame or something else?",
    "What imaging type would you say this is?",
    "Could you classify this image by modality?",
)

# ---------------------------------------------------------------------------
# Two-turn conversations: the first turn names the target, the second refers
# back to it without naming it.
# ---------------------------------------------------------------------------
FOLLOW_UPS: tuple[tuple[str, str], ...] = (
    ("Please outline the {target}.", "Outline it again."),
    ("Could you segment the {target} for me?", "Segment it again please."),
    ("Show me the {target}.", "Show that one once more."),
    ("Highlight the {target} on this image.", "Can you redo that?"),
    ("I need the {target} contoured.", "Same again, please."),
    ("Trace the {target}, please.", "Do the same thing one more time."),
    ("{target} mask pls", "again"),
    ("Can you draw around the {target}?", "Repeat the last outline."),
    ("Delineate the {target} on this scan.", "Could you show me that structure again?"),
    ("Mark out the {target} for my students.", "Once more for the people at the back."),
    ("Give me a mask of the {target}.", "Redo the previous segmentation."),
    ("Where is the {target}? Outline it.", "Show me the same region again."),
)

# ---------------------------------------------------------------------------
# Other names for canonical targets; each alternative denotes the same
# structure as its canonical name, never a different one.
# ---------------------------------------------------------------------------
TARGET_SYNONYMS: dict[str, tuple[str, ...]] = {
    "polyp": ("colonic polyp", "colorectal polyp", "polypoid lesion"),
    "breast lesion": ("breast mass", "breast lump", "mammary lesion"),
    "thyroid nodule": ("thyroid lump", "nodule of the thyroid", "thyroid nodular lesion"),
    "fetal head": ("foetal head", "baby's head", "head of the fetus"),
    "lungs": ("lung fields", "both lungs", "left and right lungs"),
    "COVID-19 infection": ("COVID pneumonia", "COVID-19 lung lesions", "SARS-CoV-2 pneumonia"),
    "retinal vessels": ("retinal blood vessels", "retinal vasculature", "vessels of the retina"),
    "cell nuclei": ("nuclei", "cellular nuclei", "nuclei of the cells"),
    "cell membranes": ("plasma membranes", "cell boundaries", "cell borders"),
    "liver": ("hepar", "liver parenchyma", "whole liver"),
    "spleen": ("lien", "splenic parenchyma", "whole spleen"),
    "kidney": ("ren", "kidneys", "renal organ"),
    "heart": ("cor", "whole heart", "cardiac silhouette"),
    "urinary bladder": ("bladder", "vesica urinaria", "urine bladder"),
    "aorta": ("aortic vessel", "arteria aorta"),
    "hippocampus": ("hippocampi", "hippocampal formation", "hippocampal region"),
    "spinal cord": ("medulla spinalis", "spinal medulla", "cord"),
    "brain": ("encephalon", "brain parenchyma", "whole brain"),
    "stomach": ("gaster", "ventriculus", "gastric organ"),
    "gallbladder": ("gall bladder", "gall-bladder", "vesica biliaris", "cholecyst"),
}
