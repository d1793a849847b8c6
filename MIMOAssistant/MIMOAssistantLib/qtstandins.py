"""Plain-Qt (PySide6) stand-ins for the Slicer-only widget classes used in MIMOAssistant.ui.

Only used OUTSIDE Slicer (offscreen tests and previews), where there is no CTK and no qMRML
widget library. Each stand-in keeps the part of the real widget's API the panel uses:

* ``qMRMLWidget`` -> QWidget with ``setMRMLScene`` (passes the scene to child node selectors,
  as the .ui file's ``mrmlSceneChanged`` connections do in Slicer);
* ``ctkCollapsibleButton`` -> QGroupBox whose ``text`` is the title and ``collapsed`` hides the contents;
* ``qMRMLNodeComboBox`` -> QComboBox listing the scene's nodes of ``nodeTypes`` (kept up to date
  through scene observers), with ``currentNode``/``setCurrentNode`` and the
  ``currentNodeChanged`` signal; "none" is the first item when ``noneEnabled``.

Inside Slicer none of this is imported: the real widgets are used.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET

from PySide6.QtCore import Property, QBuffer, QByteArray, QIODevice, Signal
from PySide6.QtWidgets import QComboBox, QGroupBox, QWidget

STAND_IN_CLASSES = ("qMRMLWidget", "ctkCollapsibleButton", "qMRMLNodeComboBox")


class qMRMLWidget(QWidget):  # noqa: N801  (the Slicer class name, as the .ui file names it)
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        for child in self.findChildren(qMRMLNodeComboBox):
            child.setMRMLScene(scene)
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class ctkCollapsibleButton(QGroupBox):  # noqa: N801
    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def _getText(self) -> str:
        return self.title()

    def _setText(self, value: str) -> None:
        self.setTitle(value)

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def _setCollapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        for child in self.findChildren(QWidget):
            if child.parent() is self:
                child.setVisible(not self._collapsed)

    text = Property(str, _getText, _setText)
    collapsed = Property(bool, _getCollapsed, _setCollapsed)


class qMRMLNodeComboBox(QComboBox):  # noqa: N801
    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes: list[str] = []
        self._noneEnabled = False
        self._noneDisplay = "None"
        self._flags = {"addEnabled": False, "removeEnabled": False, "renameEnabled": False, "showChildNodeTypes": True}
        self._scene = None
        self._tags: list[int] = []
        self._refreshing = False
        self.currentIndexChanged.connect(self._onIndexChanged)

    # Designer properties ------------------------------------------------------------
    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def _setNodeTypes(self, value) -> None:
        self._nodeTypes = [str(v) for v in value]
        self._refresh()

    def _getNoneEnabled(self) -> bool:
        return self._noneEnabled

    def _setNoneEnabled(self, value: bool) -> None:
        self._noneEnabled = bool(value)
        self._refresh()

    def _getNoneDisplay(self) -> str:
        return self._noneDisplay

    def _setNoneDisplay(self, value: str) -> None:
        self._noneDisplay = str(value)
        self._refresh()

    def _flag(name):  # noqa: N805
        return Property(bool, lambda self: self._flags[name], lambda self, value: self._flags.__setitem__(name, bool(value)))

    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)
    noneEnabled = Property(bool, _getNoneEnabled, _setNoneEnabled)
    noneDisplay = Property(str, _getNoneDisplay, _setNoneDisplay)
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    showChildNodeTypes = _flag("showChildNodeTypes")
    del _flag

    # MRML ----------------------------------------------------------------------------
    def setMRMLScene(self, scene) -> None:
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndImportEvent, scene.EndCloseEvent):
                self._tags.append(scene.AddObserver(event, lambda caller, event: self._refresh()))
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def nodes(self) -> list:
        if self._scene is None:
            return []
        found = []
        for className in self._nodeTypes:
            collection = self._scene.GetNodesByClass(className)
            for index in range(collection.GetNumberOfItems()):
                node = collection.GetItemAsObject(index)
                if node not in found and not node.GetHideFromEditors():
                    found.append(node)
        return found

    def _refresh(self) -> None:
        previous = self.currentNodeID()
        self._refreshing = True
        try:
            self.clear()
            if self._noneEnabled:
                self.addItem(self._noneDisplay, "")
            for node in self.nodes():
                self.addItem(node.GetName(), node.GetID())
            index = self.findData(previous) if previous else -1
            if index < 0 and not self._noneEnabled and self.count():
                index = 0
            self.setCurrentIndex(max(index, 0) if self.count() else -1)
        finally:
            self._refreshing = False
        if self.currentNodeID() != previous:
            self._emitCurrent()

    def _onIndexChanged(self, index: int) -> None:
        if not self._refreshing:
            self._emitCurrent()

    def _emitCurrent(self) -> None:
        self.currentNodeChanged.emit(self.currentNode())
        self.currentNodeIDChanged.emit(self.currentNodeID())

    def currentNodeID(self) -> str:
        data = self.currentData()
        return str(data) if data else ""

    def currentNode(self):
        nodeID = self.currentNodeID()
        return self._scene.GetNodeByID(nodeID) if nodeID and self._scene is not None else None

    def setCurrentNodeID(self, nodeID: str) -> None:
        self._refresh()
        index = self.findData(nodeID or "")
        if index < 0 and not nodeID and self._noneEnabled:
            index = 0
        if index >= 0:
            self.setCurrentIndex(index)

    def setCurrentNode(self, node) -> None:
        self.setCurrentNodeID(node.GetID() if node is not None else "")


def _prepareUI(path: str) -> bytes:
    """The .ui XML without the Slicer-specific signal connections (the stand-ins forward the
    scene themselves) and with the stand-ins declared as custom widgets of QWidget."""
    tree = ET.parse(path)
    root = tree.getroot()
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)
    return ET.tostring(root, encoding="utf-8")


def loadUIWithStandIns(path: str, parent=None):
    """Load ``path`` with QUiLoader, the Slicer-only classes mapped to the stand-ins.
    Returns ``(widget, ui)``; ``ui`` has one attribute per named child widget (as
    ``slicer.util.childWidgetVariables`` gives inside Slicer)."""
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox):
        loader.registerCustomWidget(cls)
    buffer = QBuffer()
    buffer.setData(QByteArray(_prepareUI(path)))
    buffer.open(QIODevice.ReadOnly)
    widget = loader.load(buffer, parent)
    buffer.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path}: {loader.errorString()}")
    ui = types.SimpleNamespace()
    for child in widget.findChildren(QWidget):
        name = child.objectName()
        if name and not name.startswith("qt_") and not hasattr(ui, name):
            setattr(ui, name, child)
    return widget, ui
