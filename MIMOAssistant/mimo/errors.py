"""Errors the engine raises for the user's input: each message names the problem."""


class MimoError(Exception):
    """Base class of every error caused by input, files or models (shown to the user as is)."""


class ImageLoadError(MimoError):
    """The image file or folder cannot be read as a supported 2D/3D image."""


class GeometryError(MimoError):
    """A slice, axis or coordinate does not fit the image geometry."""


class PromptError(MimoError):
    """A visual prompt is malformed, degenerate or outside the image."""


class BackendError(MimoError):
    """A backend cannot be created, loaded or cannot answer the request."""


class OutputError(MimoError):
    """A result cannot be written to the requested file."""


class Cancelled(MimoError):
    """The caller cancelled a running turn."""
