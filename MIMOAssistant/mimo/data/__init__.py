"""Instruction data for MIMO-style training: ``mimo-assistant data build`` and its loader.

- :mod:`mimo.data.builder`: manifests + labelled volumes -> ``samples.jsonl``, ``datasheet.json/md``;
- :mod:`mimo.data.dataset`: :func:`load_samples` for training code;
- :mod:`mimo.data.knowledge`: the knowledge base behind the reasoning questions;
- :mod:`mimo.data.prompt_sim`: visual prompts simulated from masks;
- :mod:`mimo.data.grouping`: patient / near-duplicate groups and splits;
- :mod:`mimo.data.volumes`: slices of labelled CT/MR volumes;
- :mod:`mimo.data.cli`: the command line (wired into ``mimo-assistant data build``).
"""

from .dataset import Sample, load_samples

__all__ = ["Sample", "load_samples"]
