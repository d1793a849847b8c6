"""A real MRML scene from ``slicer-core`` set up the way the Slicer application would, for tests.

``slicer.util`` functions such as ``updateSegmentBinaryLabelmapFromArray`` need
``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``; the application normally
provides them. :func:`slicer_scene` builds a fresh scene with the application, colour,
volumes, segmentations and markups logics, registers the segmentation converter rules,
and installs them on the ``slicer`` module for the duration of a test.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for the Slicer logic tests")

_RULES_REGISTERED = False


def _register_converter_rules() -> None:
    global _RULES_REGISTERED
    if _RULES_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        factory.RegisterConverterRule(rule())
    _RULES_REGISTERED = True


class SlicerScene:
    """A scene plus the module logics a Slicer application would own."""

    def __init__(self) -> None:
        _register_converter_rules()
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)  # creates the selection and interaction singletons
        # The application also keeps a crosshair singleton: it reports the view under the mouse.
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetSingletonTag("default")
        self.scene.AddNode(crosshair)
        self.crosshair = crosshair
        self.colors = self._logic(slicer.vtkSlicerColorLogic(), "Colors")
        self.volumes = self._logic(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentations = self._logic(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self.markups = self._logic(slicer.vtkSlicerMarkupsLogic(), "Markups")
        self._slice_logics = []

    def _logic(self, logic, name: str):
        logic.SetMRMLApplicationLogic(self.app)
        logic.SetMRMLScene(self.scene)
        self.app.SetModuleLogic(name, logic)
        return logic

    def install(self):
        """Point ``slicer.mrmlScene`` and ``slicer.modules`` at this scene; returns an undo function."""
        previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(
            volumes=types.SimpleNamespace(logic=lambda: self.volumes),
            segmentations=types.SimpleNamespace(logic=lambda: self.segmentations),
            markups=types.SimpleNamespace(logic=lambda: self.markups),
            colors=types.SimpleNamespace(logic=lambda: self.colors),
        )

        def restore() -> None:
            for name, value in previous.items():
                if value is None:
                    if hasattr(slicer, name):
                        delattr(slicer, name)
                else:
                    setattr(slicer, name, value)

        return restore

    def load_volume(self, path, name: str = "volume"):
        node = self.volumes.AddArchetypeVolume(str(path), name)
        if node is None:
            raise RuntimeError(f"slicer-core could not load {path}")
        return node

    def slice_view(self, layout_name: str, volume_node, width: int = 400, height: int = 300):
        """A slice node driven by a real vtkMRMLSliceLogic (as a Slicer slice view is), showing
        ``volume_node``, resized and fitted like a freshly shown view."""
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.app)
        logic.SetMRMLScene(self.scene)
        slice_node = logic.AddSliceNode(layout_name)
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        logic.ResizeSliceNode(width, height)
        self._slice_logics.append(logic)
        return slice_node, logic

    def hover(self, slice_node, xy=(10.0, 10.0)) -> None:
        """What the application does when the mouse moves over a slice view: the crosshair
        node records the view (``SetCursorPositionXYZ``)."""
        self.crosshair.SetCursorPositionXYZ([float(xy[0]), float(xy[1]), 0.0], slice_node)


@contextmanager
def installed_scene():
    """A fresh :class:`SlicerScene` installed as ``slicer.mrmlScene`` for the ``with`` block."""
    scene = SlicerScene()
    restore = scene.install()
    try:
        yield scene
    finally:
        restore()
        scene.scene.Clear(1)


@pytest.fixture
def slicer_scene():
    with installed_scene() as scene:
        yield scene
