"""The values of every choice option, spelled once: one `str` Enum per choice.

The command line takes these Enums as the options' types (Typer lists their values in --help), a
params file's value is checked against them, and a config holds the plain string (`.value`), so
checkpoints, summaries and stores keep plain strings. Library modules check their arguments
against the same Enums.
"""

from __future__ import annotations

from enum import Enum

from asdtool.data.layouts import YEARS as LAYOUT_YEARS


class Choice(str, Enum):
    """A choice option: each member's value is its spelling on the command line and in params files."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Return the spellings, in declaration order."""
        return tuple(m.value for m in cls)

    @classmethod
    def listed(cls) -> str:
        """Return the spellings as a comma-separated list, for messages."""
        return ", ".join(cls.values())


class Channel(Choice):
    """One channel of a stereo clip (DCASE 2026: near microphone left, far right); a mono clip is its own left and mean."""

    LEFT = "left"
    RIGHT = "right"
    MEAN = "mean"


class ViewChannel(Choice):
    """What a model hears of a clip: one channel, or both microphones as two views."""

    LEFT = "left"
    RIGHT = "right"
    MEAN = "mean"
    BOTH = "both"


class Backbone(Choice):
    """A pre-trained transformer (pre-training, the frozen model, the registry)."""

    BEATS = "beats"
    EAT = "eat"


class ModelBackbone(Choice):
    """What a fine-tuned model is built on: one backbone, or both fused (the Dual model)."""

    BEATS = "beats"
    EAT = "eat"
    DUAL = "dual"


class Size(Choice):
    """A backbone size: tiny (CPU) or base (the papers')."""

    TINY = "tiny"
    BASE = "base"


class Scheduler(Choice):
    """The learning-rate schedule of fine-tuning."""

    WARMUP_LINEAR = "warmup-linear"
    COSINE_RESTARTS = "cosine-restarts"
    CONSTANT = "constant"


class Optimizer(Choice):
    """The optimiser of fine-tuning."""

    ADAMW = "adamw"
    ADAM = "adam"


class Labels(Choice):
    """The classes of fine-tuning: real attributes, or pseudo labels for types without attributes."""

    ATTRIBUTES = "attributes"
    PSEUDO = "pseudo"


class HeadInput(Choice):
    """What the head's pooling fuses: every patch token, or frame embeddings."""

    PATCHES = "patches"
    FRAMES = "frames"


class EmbeddingLayer(Choice):
    """The dense layer of the head whose output the detector embeds."""

    FIRST = "first"
    SECOND = "second"


class Pooling(Choice):
    """How the frozen model pools its tokens: over all tokens, or band by band (freq-)."""

    MEANSTD = "meanstd"
    MEAN = "mean"
    FREQ_MEANSTD = "freq-meanstd"
    FREQ_MEAN = "freq-mean"


class Linkage(Choice):
    """The AHC linkage of pseudo-labelling."""

    WARD = "ward"
    AVERAGE = "average"
    COMPLETE = "complete"
    SINGLE = "single"


class Normalise(Choice):
    """detect's domain-wise score normalisation."""

    NONE = "none"
    DOMAIN_Z = "domain-z"
    LOCAL_DENSITY = "local-density"


class BaselineMethod(Choice):
    """The reference detectors."""

    LOGMEL_MEAN = "logmel-mean"
    LOGMEL_MEANSTD = "logmel-meanstd"
    AUTOENCODER = "autoencoder"


class Aggregate(Choice):
    """How a recording's window scores become one score."""

    MAX = "max"
    MEAN = "mean"


class Quantize(Choice):
    """Weight quantisation of an exported bundle."""

    NONE = "none"
    INT8 = "int8"


LayoutYear = Choice("LayoutYear", {y: y for y in LAYOUT_YEARS})  # a DCASE year's layout
Layout = Choice("Layout", {y: y for y in ("auto", *LAYOUT_YEARS)})  # a data root's reader: found from its clips, or a year's
