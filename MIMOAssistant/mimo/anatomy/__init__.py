"""Anatomy by atlas registration: named CT/MR structures as 3D segments (issue 23)."""

from .atlases import Atlas, AtlasError, builtin_atlases, find_atlas
from .grounding import AnatomyAnswer, AnatomyGrounder
from .registration import RegistrationSettings, register

__all__ = ["Atlas", "AtlasError", "AnatomyAnswer", "AnatomyGrounder", "RegistrationSettings", "builtin_atlases", "find_atlas", "register"]
