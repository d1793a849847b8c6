"""MIMO engine: images, slice geometry, prompts, backends, terminology and outputs.

The engine never imports Slicer or Qt, so the same code serves the Slicer module,
the command line and the server.
"""

__version__ = "0.1.0"
