"""The conversation as shown in the chat panel: entries, JSON stored with the scene, HTML.

The transcript is a list of plain dicts (JSON-serialisable) so that it can be written into the
scene (a parameter of the module's ``vtkMRMLScriptedModuleNode``) and read back when the
scene is loaded. Grounded terms keep the IDs of their segmentation node and segment, so that
after reloading a scene the links still show, hide and centre the segments. No Qt here.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable

from mimo.backend import Message

MODULE_NAME = "MIMOAssistant"
CONVERSATION_PARAMETER = "Conversation"
FORMAT_VERSION = 1

#: Link schemes of the chat browser.
SEGMENT_SCHEME = "mimo-segment"
COPY_SCHEME = "mimo-copy"

USER, ASSISTANT, NOTICE, ERROR = "user", "assistant", "notice", "error"


def userEntry(text: str, view: str = "") -> dict:
    return {"role": USER, "text": text, "view": view, "time": time.time()}


def assistantEntry(text: str, spans: list[dict], backend: str = "", latency: float | None = None, caution: str | None = None,
                   confidence: float | None = None, abstained: bool = False) -> dict:
    """``spans``: ``{"term", "start", "end", "segmentationNodeID", "segmentationNodeName", "segmentId", "color"}``
    (colour as ``#rrggbb``); ``caution``: the backend's warning about this answer's masks;
    ``confidence``: the model's probability of what it wrote (text models), ``abstained``: it
    withheld a name or a mask it was unsure of."""
    entry = {"role": ASSISTANT, "text": text, "spans": spans, "backend": backend, "latency": latency, "time": time.time()}
    if caution:
        entry["caution"] = caution
    if confidence is not None:
        entry["confidence"] = float(confidence)
    if abstained:
        entry["abstained"] = True
    return entry


def noticeEntry(text: str, role: str = NOTICE) -> dict:
    return {"role": role, "text": text, "time": time.time()}


def historyFromTranscript(transcript: list[dict]) -> list[Message]:
    """The engine's conversation context: each answered question and its answer."""
    messages: list[Message] = []
    pendingQuestion = None
    for entry in transcript:
        if entry.get("role") == USER:
            pendingQuestion = entry.get("text", "")
        elif entry.get("role") == ASSISTANT and pendingQuestion is not None and not entry.get("undone"):
            messages += [Message("user", pendingQuestion), Message("assistant", entry.get("text", ""))]
            pendingQuestion = None
    return messages


def toJSON(transcript: list[dict]) -> str:
    return json.dumps({"version": FORMAT_VERSION, "entries": transcript}, ensure_ascii=False)


def fromJSON(text: str | None) -> list[dict]:
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return [noticeEntry("(the conversation stored in this scene could not be read)", ERROR)]
    entries = data.get("entries", []) if isinstance(data, dict) else []
    return [entry for entry in entries if isinstance(entry, dict) and "role" in entry]


# ---------------------------------------------------------------------------------------
# Scene storage


def conversationNode(scene, create: bool = True):
    """The module's parameter node (``vtkMRMLScriptedModuleNode`` with ModuleName MIMOAssistant)."""
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute("ModuleName") == MODULE_NAME or node.GetModuleName() == MODULE_NAME:
            return node
    if not create:
        return None
    import slicer

    node = slicer.vtkMRMLScriptedModuleNode()
    node.SetName(MODULE_NAME)
    node.SetModuleName(MODULE_NAME)
    node.SetAttribute("ModuleName", MODULE_NAME)
    node.SetHideFromEditors(True)
    scene.AddNode(node)
    return node


def saveToScene(scene, transcript: list[dict]) -> None:
    """Write the transcript into the scene (it is saved with the scene, .mrml or .mrb); nothing is
    written when the scene already holds it, nor a node made for an empty conversation."""
    node = conversationNode(scene, create=bool(transcript))
    text = toJSON(transcript)
    if node is not None and node.GetParameter(CONVERSATION_PARAMETER) != text:
        node.SetParameter(CONVERSATION_PARAMETER, text)


def loadFromScene(scene) -> list[dict]:
    node = conversationNode(scene, create=False)
    return fromJSON(node.GetParameter(CONVERSATION_PARAMETER)) if node is not None else []


# ---------------------------------------------------------------------------------------
# HTML for the chat browser

ROLE_STYLE = {
    USER: ("You", "#1f4e9a"),
    ASSISTANT: ("MIMO", "#006400"),
    NOTICE: ("", "#707070"),
    ERROR: ("", "#b00000"),
}
CAUTION_COLOR = "#a05a00"


def segmentLink(segmentationNodeID: str, segmentId: str) -> str:
    """The link of a segment; both IDs percent-encoded (a segment ID from a loaded file may hold
    "#", "?", "/" or spaces, which a URL would otherwise cut or change)."""
    from urllib.parse import quote

    return f"{SEGMENT_SCHEME}:{quote(segmentationNodeID, safe='')}/{quote(segmentId, safe='')}"


def parseLink(url: str) -> tuple[str, tuple]:
    """``mimo-segment:NodeID/SegmentID`` -> ("segment", (nodeID, segmentID)); ``mimo-copy:3`` -> ("copy", (3,))."""
    scheme, _, rest = (url or "").partition(":")
    if scheme == SEGMENT_SCHEME and "/" in rest:
        from urllib.parse import unquote

        nodeID, _, segmentId = rest.partition("/")
        return "segment", (unquote(nodeID), unquote(segmentId))
    if scheme == COPY_SCHEME and rest.isdigit():
        return "copy", (int(rest),)
    return "", ()


def _answerHtml(entry: dict, segmentState: Callable[[dict], tuple[bool, str | None]]) -> str:
    text = entry.get("text", "")
    spans = sorted(entry.get("spans", []), key=lambda s: s.get("start", 0))
    parts, position = [], 0
    for span in spans:
        start, end = int(span.get("start", 0)), int(span.get("end", 0))
        if start < position or end > len(text) or start >= end:
            continue
        parts.append(html.escape(text[position:start]))
        exists, color = segmentState(span)
        term = html.escape(text[start:end])
        if exists:
            href = segmentLink(span.get("segmentationNodeID", ""), span.get("segmentId", ""))
            parts.append(
                f'<a href="{html.escape(href)}" style="color:{color or span.get("color", "#000000")}; font-weight:bold;" '
                f'title="Show/hide and centre the views on this segment">{term}</a>'
            )
        else:
            parts.append(f'<span style="color:#707070; text-decoration:line-through;" title="segment removed">{term}</span>')
        position = end
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def renderHtml(transcript: list[dict], segmentState: Callable[[dict], tuple[bool, str | None]] | None = None, disclaimer: str = "") -> str:
    """The chat as HTML; grounded terms are links in their segment's colour.

    ``segmentState(span) -> (exists, "#rrggbb")`` looks the span's segment up in the scene
    (links to removed segments are shown struck through)."""
    state = segmentState or (lambda span: (True, span.get("color")))
    rows = []
    for index, entry in enumerate(transcript):
        role = entry.get("role")
        who, color = ROLE_STYLE.get(role, ("", "#000000"))
        if role == ASSISTANT:
            body = _answerHtml(entry, state)
            meta = []
            if entry.get("backend"):
                meta.append(html.escape(entry["backend"]))
            if entry.get("latency") is not None:
                meta.append(f"{float(entry['latency']):.1f} s")
            if entry.get("confidence") is not None:
                meta.append(f"confidence {float(entry['confidence']):.2f}" + (", unsure: withheld" if entry.get("abstained") else ""))
            if entry.get("undone"):
                meta.append("undone")
            tail = f' <a href="{COPY_SCHEME}:{index}" style="color:#707070;">[copy]</a>'
            tail += f' <span style="color:#909090; font-size:small;">{" · ".join(meta)}</span>' if meta else ""
            rows.append(f'<p><b style="color:{color}">{who}:</b> {body}{tail}</p>')
            if entry.get("caution"):
                rows.append(f'<p style="color:{CAUTION_COLOR}; font-size:small;">&#9888; {html.escape(entry["caution"])}</p>')
        elif role == USER:
            view = f' <span style="color:#909090; font-size:small;">({html.escape(entry["view"])})</span>' if entry.get("view") else ""
            rows.append(f'<p><b style="color:{color}">{who}:</b> {html.escape(entry.get("text", ""))}{view}</p>')
        else:
            rows.append(f'<p style="color:{color};"><i>{html.escape(entry.get("text", ""))}</i></p>')
    if disclaimer:
        rows.append(f'<p style="color:#b00000; font-size:small;">{html.escape(disclaimer)}</p>')
    return "\n".join(rows)
