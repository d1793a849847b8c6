"""The project's implementation of MIMO: a medical vision-language model with visual referring
input (boxes, points, scribbles, lassos) and pixel-grounded output (``<p>term</p><SEG>`` -> mask).

One component per module: :mod:`.grounding` (SAM-style encoder and decoder),
:mod:`.understanding` (the features the LM reads), :mod:`.visual_prompt`, :mod:`.aligner`,
:mod:`.language_model`, :mod:`.pixel_decoder` (``<SEG>`` to masks), :mod:`.losses`,
:mod:`.generation`, :mod:`.modeling_mimo` (the model), :mod:`.processing` (the processor),
:mod:`.checkpoint`, :mod:`.training`, :mod:`.presets`. Everything needs torch and transformers;
import this package lazily.
"""

from .checkpoint import CheckpointError
from .configuration import FORMAT_VERSION, MimoConfig, mimo_7b_config, mimo_tiny_config
from .modeling_mimo import (
    ImageFeatures,
    MimoForConditionalGeneration,
    MimoGeneration,
    MimoOutput,
)
from .presets import create_mimo_7b, create_mimo_tiny, load_mimo, save_mimo
from .processing import ImageGeometry, ImageInputs, MimoProcessor, ProcessorSettings
from .training import fit, train_step

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ImageFeatures",
    "ImageGeometry",
    "ImageInputs",
    "MimoConfig",
    "MimoForConditionalGeneration",
    "MimoGeneration",
    "MimoOutput",
    "MimoProcessor",
    "ProcessorSettings",
    "create_mimo_7b",
    "create_mimo_tiny",
    "fit",
    "load_mimo",
    "mimo_7b_config",
    "mimo_tiny_config",
    "save_mimo",
    "train_step",
]
