"""The one adapter between the panel and Qt: PythonQt in Slicer, PySide6 outside it.

Inside Slicer the ``qt`` module is PythonQt, which exposes Qt *properties* as attributes
(``lineEdit.text``, ``checkBox.checked``, ``comboBox.currentIndex``); PySide6 exposes them as
methods (``lineEdit.text()``, ``checkBox.isChecked()``). Setters (``setText``, ``setEnabled``,
``setValue``...) and ``signal.connect`` are the same in both. The panel reads every
property through this module and never imports a binding itself, so the same panel code runs
in Slicer and in the offscreen PySide6 tests.

Outside Slicer, :func:`loadUI` loads the Designer file with QUiLoader after mapping the
Slicer-only widget classes (``qMRMLWidget``, ``ctkCollapsibleButton``, ``qMRMLNodeComboBox``)
to the plain-Qt stand-ins of :mod:`MIMOAssistantLib.qtstandins`.
"""

from __future__ import annotations

import types

try:  # Slicer's embedded PythonQt
    import qt as _qt

    BINDING = "PythonQt"
except ImportError:  # plain Python: PySide6 (tests, previews)
    _qt = None
    BINDING = "PySide6"


def _pyside():
    from PySide6 import QtCore, QtGui, QtWidgets

    return QtCore, QtGui, QtWidgets


def qtNamespace():
    """An object with the Qt classes the panel creates (QTimer, QListWidgetItem, QColor...)."""
    if _qt is not None:
        return _qt
    QtCore, QtGui, QtWidgets = _pyside()
    namespace = types.SimpleNamespace()
    for module in (QtCore, QtGui, QtWidgets):
        for name in dir(module):
            if name.startswith("Q") and not hasattr(namespace, name):
                setattr(namespace, name, getattr(module, name))
    namespace.Qt = QtCore.Qt
    return namespace


# -- properties (attribute in PythonQt, method in PySide6) -------------------------------


def prop(widget, name: str):
    """A Qt property's value: ``widget.name`` in PythonQt, ``widget.name()`` in PySide6."""
    value = getattr(widget, name)
    return value() if callable(value) else value


def text(widget) -> str:
    return str(prop(widget, "text"))


def setText(widget, value: str) -> None:
    widget.setText(value)


def isChecked(widget) -> bool:
    return bool(widget.checked) if BINDING == "PythonQt" else bool(widget.isChecked())


def setChecked(widget, value: bool) -> None:
    widget.setChecked(bool(value))


def isEnabled(widget) -> bool:
    return bool(widget.enabled) if BINDING == "PythonQt" else bool(widget.isEnabled())


def setEnabled(widget, value: bool) -> None:
    widget.setEnabled(bool(value))


def isVisible(widget) -> bool:
    return bool(widget.visible) if BINDING == "PythonQt" else bool(widget.isVisible())


def setVisible(widget, value: bool) -> None:
    widget.setVisible(bool(value))


def value(widget):
    return prop(widget, "value")


def setValue(widget, number) -> None:
    widget.setValue(number)


def currentIndex(widget) -> int:
    return int(prop(widget, "currentIndex"))


def setCurrentIndex(widget, index: int) -> None:
    widget.setCurrentIndex(int(index))


def currentText(widget) -> str:
    return str(prop(widget, "currentText"))


def count(widget) -> int:
    return int(prop(widget, "count"))


def currentRow(widget) -> int:
    return int(prop(widget, "currentRow"))


def setToolTip(widget, tip: str) -> None:
    widget.setToolTip(tip)


def setStyleSheet(widget, style: str) -> None:
    widget.setStyleSheet(style)


def userRole() -> int:
    Qt = qtNamespace().Qt
    return Qt.UserRole


def itemData(item):
    """A list item's user data (QListWidgetItem.data(UserRole))."""
    return item.data(userRole())


def comboData(combo, index: int):
    return combo.itemData(index)


# -- signals, timers, dialogs ------------------------------------------------------------


def connect(obj, signature: str, slot) -> None:
    """Connect ``signature`` (e.g. ``"clicked(bool)"``, ``"currentNodeChanged(vtkMRMLNode*)"``)
    to ``slot``. PythonQt connects by signature (overloaded signals resolve exactly); PySide6
    by the signal attribute."""
    if BINDING == "PythonQt":
        obj.connect(signature, slot)
    else:
        getattr(obj, signature.split("(")[0]).connect(slot)


def makeTimer(intervalMs: int, callback, parent=None):
    timer = qtNamespace().QTimer(parent) if parent is not None else qtNamespace().QTimer()
    timer.setInterval(int(intervalMs))
    timer.timeout.connect(callback)
    return timer


def processEvents() -> None:
    ns = qtNamespace()
    if BINDING == "PythonQt":
        import slicer

        slicer.app.processEvents()
    else:
        ns.QApplication.processEvents()


def setClipboardText(value: str) -> None:
    ns = qtNamespace()
    ns.QApplication.clipboard().setText(value)


def clipboardText() -> str:
    ns = qtNamespace()
    return str(ns.QApplication.clipboard().text())


def confirm(parent, title: str, message: str) -> bool:
    """A modal OK/Cancel question. In Slicer's --testing mode the answer is no: Slicer would
    accept every dialog itself there, installing gigabytes or sending images unasked."""
    if BINDING == "PythonQt":
        import slicer

        if slicer.app.testingEnabled():
            return False
        return bool(slicer.util.confirmOkCancelDisplay(message, windowTitle=title, parent=parent))
    ns = qtNamespace()
    box = ns.QMessageBox(ns.QMessageBox.Question, title, message, ns.QMessageBox.Ok | ns.QMessageBox.Cancel, parent)
    box.setObjectName("MIMOAssistantConfirmation")
    return box.exec() == ns.QMessageBox.Ok


def chooseDirectory(parent, title: str, start: str = "") -> str:
    ns = qtNamespace()
    return str(ns.QFileDialog.getExistingDirectory(parent, title, start) or "")


def settings():
    """The application's settings (Slicer's QSettings inside Slicer)."""
    return qtNamespace().QSettings()


def colorIcon(hexColor: str, size: int = 12):
    ns = qtNamespace()
    pixmap = ns.QPixmap(size, size)
    pixmap.fill(ns.QColor(hexColor))
    return ns.QIcon(pixmap)


def newListItem(label: str, data=None, icon=None):
    ns = qtNamespace()
    item = ns.QListWidgetItem(icon, label) if icon is not None else ns.QListWidgetItem(label)
    if data is not None:
        item.setData(userRole(), data)
    return item


def scrollToBottom(textBrowser) -> None:
    bar = textBrowser.verticalScrollBar()
    bar.setValue(prop(bar, "maximum"))


# -- loading the .ui outside Slicer --------------------------------------------------------


def loadUI(path: str, parent=None):
    """Load a Designer file: ``slicer.util.loadUI`` in Slicer, QUiLoader with stand-ins outside.
    Returns ``(widget, ui)`` where ``ui`` has one attribute per named child widget."""
    if BINDING == "PythonQt":
        import slicer

        widget = slicer.util.loadUI(path)
        return widget, slicer.util.childWidgetVariables(widget)
    from .qtstandins import loadUIWithStandIns

    return loadUIWithStandIns(path, parent)
