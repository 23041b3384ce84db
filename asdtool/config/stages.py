"""One typed config per stage: the single source of every option, its type, default and help.

Each stage's options are the fields of one dataclass below, declared with `asdtool.config.options.option`;
shared option groups (`ReadsData`) are inherited. Range checks that need no data live in each
config's `validate()`. This module imports no torch, so `asdtool --help` and the light commands
start fast.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from asdtool.config.checks import (
    MAX_BATCH, MAX_RECORDING, MAX_THREADS, at_least, check_hop, check_seed, positive, within,
)
from asdtool.config.choices import (
    Aggregate, Backbone, BaselineMethod, Channel, EmbeddingLayer, HeadInput, Labels, Layout, LayoutYear, Linkage,
    ModelBackbone, Normalise, Optimizer, Pooling, Quantize, Scheduler, Size, ViewChannel,
)
from asdtool.config.options import Section, option
from asdtool.core.errors import AsdError, quote

# ----------------------------------------------------------------------------- the stages

@dataclass(kw_only=True)
class ReadsData:
    """The options of every stage that reads a DCASE data root: which layout's reader reads it."""

    layout: str = option("auto", "DCASE layout of the data root: auto (each machine folder's own, found from its clips) or a year.", choices=Layout, recipe=False)
    mixed_layouts: bool = option(False, "Read a data root whose machine folders follow different years' layouts, each with its own reader (refused otherwise).", recipe=False)

    @property
    def reading(self):
        """The `asdtool.data.dcase.Reading` of these options."""
        from asdtool.data.dcase import Reading

        return Reading(self.layout, self.mixed_layouts, bool(getattr(self, "supplemental", False)))


ROOTS_HELP = (
    "DCASE data root {what}; repeat it to add roots (earlier years, the eval set's additional training "
    "data): each root keeps its own machine types, named <root>:<machine>."
)


def _roots(cfg) -> None:
    """Take a single data root as a list of one (configs built in code), and refuse an empty list."""
    if isinstance(cfg.data_root, (str, Path)):
        cfg.data_root = [Path(cfg.data_root)]
    if not cfg.data_root:
        raise AsdError("give at least one --data-root")
    cfg.data_root = [Path(r) for r in cfg.data_root]


CHANNEL_HELP = "Channel of stereo clips (DCASE 2026: near microphone left, far right): left (the organisers' baseline), right or mean of both; a mono clip is its own left and mean."
VIEWS_HELP = " both: the two microphones as two views of a clip (two training examples; the mean of their embeddings)."


_PAPER = "with --paper-sizes"
FORCE_HELP = ("Replace an existing file at the output even when it is not one this command wrote (its own inputs are "
              "refused in every case).")
MAX_SECONDS = 300.0  # default limit on the decoded audio of one recording (score, serve)
MAX_SECONDS_HELP = ("Longest recording accepted, in seconds of decoded audio: refused from its header before decoding, "
                    "and decoding stops at the limit.")
SIGN_HELP = ("Key file: sign the bundle's content with HMAC-SHA256, so that score and serve --verify-key refuse a bundle "
             "anyone without the key has changed. Without it the bundle carries a sha256 that catches accidents (a "
             "truncated or corrupted file), not tampering.")
VERIFY_HELP = ("Key file of export --sign-key: refuse a bundle whose HMAC-SHA256 signature is missing or does not match. "
               "Without it only the content sha256 is checked, which catches accidents, not tampering.")


@dataclass(kw_only=True)
class SynthConfig:
    """asdtool synth: Write a synthetic DCASE Task 2 set: the 2024 dev set (seven machine types, exact layout and names), or with --layout any year's dev or eval set and its ground truth."""

    SECTION = Section("synth")

    out: Path = option(help="Data root to write (<out>/<machine>/train, test and attributes_00.csv).", recipe=False)
    seed: int = option(0, "Random seed; the same seed gives byte-identical files.")
    seconds: float | None = option(None, f"Clip length in seconds (default 2; 10 {_PAPER}).")
    source_train: int | None = option(None, f"Source-domain training clips per machine (default 60; 990 {_PAPER}).")
    target_train: int | None = option(None, f"Target-domain training clips per machine (default 6; 10 {_PAPER}).")
    test_per_domain: int | None = option(None, f"Normal and anomalous test clips, each, per domain and machine (default 20; 50 {_PAPER}).")
    paper_sizes: bool = option(False, "DCASE 2024 dev sizes: 990 + 10 train, 50 + 50 test per domain, 10 s.")
    machine: list[str] = option([], "Machine type (repeatable; default: all seven dev types).")
    layout: str | None = option(None, "Write the file layout, names and ground truth of this DCASE year instead of the embedded 2024 dev set (sizes apply per section).", choices=LayoutYear)
    eval: bool = option(False, "With --layout: write the year's evaluation set (unlabelled test names) and its ground truth.")
    ground_truth_out: Path | None = option(None, "With --layout: folder for the organisers' ground-truth files (default: <out>-ground-truth).", recipe=False)
    supplemental: int | None = option(None, "With --layout 2025: machine-only and noise-only supplemental clips, each, per machine type (default 10).")
    overwrite: bool = option(False, "Replace machine folders that already exist under --out (and the ground-truth folder).", recipe=False)

    def validate(self) -> None:
        """Refuse a seed out of range, and --eval, --ground-truth-out or --supplemental without --layout.

        --supplemental is for --layout 2025 only, and at least 0.
        """
        check_seed(self)  # clip counts and lengths are checked by synthesize
        if self.layout is None:
            given = [flag for flag, value in (("--eval", self.eval), ("--ground-truth-out", self.ground_truth_out),
                                              ("--supplemental", self.supplemental)) if value]  # fmt: skip
            if given:
                raise AsdError(f"{', '.join(given)} needs --layout YEAR (the embedded default is a dev set)")
        elif self.supplemental is not None and self.layout != "2025":
            raise AsdError(f"--supplemental is for --layout 2025 only, got --layout {self.layout}")
        at_least(self, 0, "supplemental")


@dataclass(kw_only=True)
class CorpusConfig:
    """asdtool corpus: Write an unlabeled pre-training corpus of generic machine-like sound (no clip of the dev set)."""

    SECTION = Section("corpus")

    out: Path = option(help="Folder to write the corpus clips into (flat, corpus_<index>.wav).", recipe=False)
    seed: int = option(0, "Random seed; the same seed gives byte-identical files.")
    clips: int = option(2000, "Number of clips.")
    seconds: float = option(2.0, "Clip length in seconds.")
    overwrite: bool = option(False, "Replace --out if it already holds a corpus.", recipe=False)

    def validate(self) -> None:
        """Refuse a seed out of range, fewer than one clip and a clip length that is not positive."""
        check_seed(self)
        at_least(self, 1, "clips")
        positive(self, "seconds")




@dataclass(kw_only=True)
class PretrainConfig:
    """asdtool pretrain: Self-supervised pre-training of a BEATs or EAT backbone on unlabeled audio, saved in the backbone's official checkpoint format.

    EAT learns as data2vec 2.0 does (EMA teacher, inverse-block masks, several masks per clip, CNN
    decoder, frame and utterance losses); BEATs predicts the discrete labels that a frozen
    random-projection tokenizer gives its masked patches (its first iteration). Objective knobs left
    unset take the backbone paper's value. Works under `torchrun` with DistributedDataParallel.
    """

    SECTION = Section("pretrain", named=True)

    audio: list[Path] = option([], "Audio folder or file (repeatable): any folder tree of WAV/FLAC; a DCASE data root gives only its <machine>/train clips.", recipe=False)
    out: Path = option(help="Folder to write: checkpoint.pt (official format), train_log.csv, summary.json.", recipe=False)
    backbone: str = option("eat", "Backbone to pre-train: beats or eat.", choices=Backbone)
    size: str = option("tiny", "Backbone size: tiny (CPU) or base (the papers').", choices=Size)
    checkpoint: str | None = option(None, "Start from these weights (official format) instead of random init.")
    steps: int = option(1000, "Optimiser steps.")
    batch_size: int = option(16, "Clips per micro-batch, over all processes.")
    grad_accum: int = option(1, "Micro-batches per optimiser step.")
    max_lr: float = option(5e-4, "Peak learning rate (linear warm-up, then cosine to --min-lr).")
    min_lr: float = option(0.0, "Final learning rate.")
    warmup: int = option(100, "Warm-up steps.")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    seconds: float = option(2.0, "Length of the random crop taken from each clip at each step (clips shorter are padded).")
    channel: str = option("left", CHANNEL_HELP, choices=Channel)
    mask_ratio: float | None = option(None, "Share of patches masked. (default: the paper's, EAT 0.8, BEATs 0.75)")
    clones: int | None = option(None, "EAT: masked copies of each clip per step (the paper: 16). (default: 16)")
    ema_decay: float | None = option(None, "EAT: EMA teacher decay at the start. (default: the paper's)")
    ema_end_decay: float | None = option(None, "EAT: EMA teacher decay at the end. (default: the paper's)")
    top_k_layers: int | None = option(None, "EAT: teacher layers averaged into the frame targets. (default: all)")
    utterance_weight: float | None = option(None, "EAT: weight of the utterance-level (CLS) loss. (default: the paper's)")
    codebook_size: int | None = option(None, "BEATs: labels of the random-projection tokenizer. (default: 1024)")
    codebook_dim: int | None = option(None, "BEATs: dimension of the tokenizer's projection. (default: 16)")
    seed: int = option(0, "Seed of the initialisation, clip order, crops and masks.")
    threads: int | None = option(None, "CPU threads of torch (intra-op). (default: torch's choice)", recipe=False)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU).", recipe=False)
    checkpoint_every: int = option(100, "Steps between resumable checkpoints.", recipe=False)
    log_every: int = option(1, "Steps between rows of train_log.csv.", recipe=False)
    max_minutes: float | None = option(None, "Stop cleanly after this many minutes with a resumable checkpoint (finish later with --resume).", recipe=False)
    resume: bool = option(False, "Continue the unfinished run in --out from its last checkpoint.", recipe=False)

    def validate(self) -> None:
        """Refuse no --audio, values out of range, and --min-lr above --max-lr (mask ratio in (0, 1), EMA decays in [0, 1])."""
        if not self.audio:
            raise AsdError("name at least one --audio folder or file")
        at_least(self, 1, "steps", "batch_size", "grad_accum", "checkpoint_every", "log_every")
        at_least(self, 0, "warmup", "min_lr", "weight_decay")
        at_least(self, 1, "clones", "top_k_layers", "codebook_size", "codebook_dim", "threads")
        positive(self, "max_lr", "seconds", "max_minutes")
        check_seed(self)
        if self.min_lr > self.max_lr:
            raise AsdError(f"--min-lr {self.min_lr} exceeds --max-lr {self.max_lr}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise AsdError(f"--mask-ratio must lie strictly between 0 and 1, got {self.mask_ratio}")
        for name in ("ema_decay", "ema_end_decay"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise AsdError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
        if self.utterance_weight is not None:
            at_least(self, 0, "utterance_weight")


@dataclass(kw_only=True)
class FinetuneConfig(ReadsData):
    """asdtool finetune: Fine-tune BEATs, EAT or both (Dual) by classifying machine attributes with ArcFace.

    Every knob of a run; the paper's recipes are values of these fields (params-dcase2024.yaml).
    Works under `torchrun --nproc-per-node N -m asdtool finetune ...` with DistributedDataParallel.
    """

    SECTION = Section("models", named=True)

    data_root: list[Path] = option(help=ROOTS_HELP.format(what="holding <machine>/train (all machine types are trained together)"), recipe=False)
    out: Path = option(help="Model folder to write: checkpoint.pt, train_log.csv, summary.json.", recipe=False)
    backbone: str = option("beats", "Pre-trained transformer: beats, eat, or dual (both, fused).", choices=ModelBackbone)
    checkpoint: str | None = option(None, "Official pre-trained weights (BEATs .pt, EAT fairseq .pt or Hugging Face folder; dual: beats=PATH,eat=PATH). Absent: random init of --size.")
    size: str = option("tiny", "Size of a randomly initialised backbone: tiny (CPU) or base (the paper's).", choices=Size)
    lora_rank: int = option(0, "LoRA rank on attention q/v/out (64 in the paper); 0 = full fine-tuning.")
    lora_alpha: float | None = option(None, "LoRA alpha (scaling alpha/r). (default: the rank)")
    labels: str = option("attributes", "Classes: attributes (machine type x attribute set) or pseudo (--pseudo-labels for types without attributes).", choices=Labels)
    channel: str = option("left", CHANNEL_HELP + VIEWS_HELP, choices=ViewChannel)
    supplemental: bool = option(False, "Also train on DCASE 2025's supplemental/ clips (machine alone, noise alone), each kind its own class per machine type.")
    pseudo_labels: str | None = option(None, "file_name,machine,pseudo_label CSV from asdtool pseudolabel.")
    steps: int = option(100, "Optimiser steps (10,000 full / 50,000 LoRA in the paper).")
    batch_size: int = option(8, "Clips per micro-batch, over all processes (32 in the paper).")
    grad_accum: int = option(1, "Micro-batches per optimiser step (8 in the paper).")
    lr: float = option(0.0, "Learning rate at the start of each warm-up.")
    max_lr: float = option(1e-4, "Peak learning rate.")
    min_lr: float = option(0.0, "Final (or cosine floor) learning rate.")
    warmup: int = option(120, "Warm-up steps (per cycle with cosine-restarts).")
    scheduler: str = option("warmup-linear", "warmup-linear (warm-up then linear decay), cosine-restarts or constant.", choices=Scheduler)
    cycle_steps: int = option(0, "Cycle length of cosine-restarts; 0 = one cycle over all steps.")
    optimizer: str = option("adamw", "adamw or adam.", choices=Optimizer)
    weight_decay: float = option(0.01, "AdamW weight decay.")
    arcface_scale: float = option(30.0, "ArcFace scale s.")
    arcface_margin: float = option(0.5, "ArcFace additive angular margin m (radians).")
    specaug_mask: int = option(80, "SpecAugment maximum time and frequency mask length; 0 disables.")
    hidden_dim: int = option(128, "Width of the first dense layer of the head.")
    emb_dim: int = option(128, "Width of the embedding (second dense layer) fed to ArcFace.")
    embedding_layer: str = option("second", "Dense layer whose output the detector embeds: first or second.", choices=EmbeddingLayer)
    head_input: str = option("patches", "What the pooling fuses: every patch token (patches) or frame embeddings, each time step's frequency patches side by side (frames).", choices=HeadInput)
    branch_weights: list[float] = option([1.0, 1.0], "Dual: per-branch loss weights, BEATs then EAT (repeat the option).")
    seconds: float = option(10.0, "Pad or cut every clip to this many seconds (10 in the paper).")
    seed: int = option(0, "Seed of the initialisation, batch order and augmentation.")
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU).", recipe=False)
    workers: int = option(0, "Data-loading worker processes.", recipe=False)
    threads: int | None = option(None, "CPU threads of torch (intra-op); the bits of the result depend on it. (default: torch's choice)", recipe=False)
    checkpoint_every: int = option(100, "Steps between resumable checkpoints.", recipe=False)
    log_every: int = option(1, "Steps between rows of train_log.csv.", recipe=False)
    resume: bool = option(False, "Continue the unfinished run in --out from its last checkpoint.", recipe=False)

    def __post_init__(self) -> None:
        _roots(self)

    def validate(self) -> None:
        """Refuse --labels pseudo without --pseudo-labels, values out of range, and --min-lr above --max-lr.

        The ArcFace margin lies in [0, pi/2) radians; --branch-weights is two non-negative weights.
        """
        if self.labels == "pseudo" and not self.pseudo_labels:
            raise AsdError("--labels pseudo needs --pseudo-labels FILE")
        at_least(self, 1, "steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "hidden_dim", "emb_dim")
        at_least(self, 0, "lora_rank", "warmup", "cycle_steps", "workers", "specaug_mask", "lr", "min_lr", "weight_decay")
        at_least(self, 1, "threads")
        check_seed(self)
        positive(self, "max_lr", "seconds", "arcface_scale")
        if self.min_lr > self.max_lr:
            raise AsdError(f"--min-lr {self.min_lr} exceeds --max-lr {self.max_lr}")
        if self.lora_alpha is not None:
            positive(self, "lora_alpha")
        if not 0 <= self.arcface_margin < math.pi / 2:
            raise AsdError(f"--arcface-margin must lie in [0, pi/2) radians, got {self.arcface_margin}")
        if len(self.branch_weights) != 2 or min(self.branch_weights) < 0:
            raise AsdError(f"--branch-weights takes two non-negative weights (BEATs, EAT), got {self.branch_weights}")

    def checkpoints(self) -> str | dict | None:
        """Return the pre-trained checkpoint argument of `build_classifier` (a dict for dual)."""
        if not self.checkpoint:
            return None
        if self.backbone != "dual":
            return self.checkpoint
        out = {}
        for part in self.checkpoint.split(","):
            key, _, value = part.partition("=")
            if key.strip() not in ("beats", "eat") or not value.strip():
                raise AsdError(f"dual checkpoint must read beats=PATH,eat=PATH, got {quote(self.checkpoint)}")
            out[key.strip()] = value.strip()
        return out


@dataclass(kw_only=True)
class PseudolabelConfig(ReadsData):
    """asdtool pseudolabel: Cluster the embeddings of machine types without attributes into pseudo attribute classes (AHC, UMAP plots)."""

    SECTION = Section("pseudolabel", named=True)

    model: Path = option(help="Stage-one model folder from asdtool finetune on the real attributes (the -full model).", recipe=False)
    data_root: list[Path] = option(help=ROOTS_HELP.format(what="whose machine types without attributes have their training clips clustered"), recipe=False)
    out: Path = option(help="Pseudo-label CSV to write (file_name,machine,pseudo_label); <stem>.summary.json goes beside it.", recipe=False)
    clusters: list[str] = option([], "MACHINE=COUNT, repeatable (the paper, dev: gearbox=20 slider=20 ToyTrain=25). A type without attributes left out gets the count of best silhouette over --suggest-range.", metavar="MACHINE=COUNT")
    plots: Path | None = option(None, "Folder for one UMAP scatter PNG per machine type. (default: <out stem>_umap/ beside --out)", recipe=False)
    suggest: bool = option(False, "Also score every count of --suggest-range by silhouette and show the best.")
    suggest_range: str = option("2-30", "Cluster counts LO-HI tried by --suggest and for types given no count.", metavar="LO-HI")
    linkage: str = option("ward", "AHC linkage: ward on L2-normalised embeddings, or average/complete/single on cosine distance.", choices=Linkage)
    seconds: float | None = option(None, "Pad or cut every clip to this many seconds. (default: the model's clip length)")
    batch_size: int = option(16, "Clips per embedding batch.", recipe=False)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    seed: int = option(0, "Seed of the UMAP layout (the clustering itself is deterministic).")
    attribute_truth: Path | None = option(None, "Score the clusters (adjusted Rand index) against the organisers' hidden attributes: a folder of <machine>/attributes_NN_{train,test}_correspondence.csv (their baseline's datasets/ground_truth_attributes/<year>/dev_data). With several data roots it scores the first root's machine types. (default: each data root's hidden_attributes.csv when it exists)", recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def __post_init__(self) -> None:
        _roots(self)

    def validate(self) -> None:
        """Refuse a batch size below 1, a clip length that is not positive and a seed out of range."""
        at_least(self, 1, "batch_size")
        positive(self, "seconds")
        check_seed(self)


@dataclass(kw_only=True)
class EmbedConfig(ReadsData):
    """asdtool embed: Embed every train and test clip with a fine-tuned model (or a frozen pre-trained backbone) into an HDF5 store."""

    SECTION = Section("embed")

    model: Path | None = option(None, "Model folder written by `asdtool finetune` (or give --backbone for the frozen model).", recipe=False)
    backbone: str | None = option(None, "Frozen model: embed with this pre-trained backbone itself (beats or eat), pooled tokens, no fine-tuning.", choices=Backbone)
    pretrained: str | None = option(None, "Frozen model: the backbone's official-format weights (asdtool pretrain's backbone.pt). Absent: random init of --size (the no-pre-training ablation).")
    size: str = option("tiny", "Frozen model: size of a randomly initialised backbone.", choices=Size)
    layer: int | None = option(None, "Frozen model: token states of this layer (0: patch embedding, L: last block). (default: the last)")
    pooling: str = option("meanstd", "Frozen model: pool the patch tokens by mean and std (meanstd) or mean, over all patches or over time band by band (freq-meanstd, freq-mean).", choices=Pooling)
    seed: int = option(0, "Frozen model: seed of a random init.")
    data_root: Path = option(help="DCASE data root holding <machine>/train and <machine>/test.", recipe=False)
    out: Path = option(help="HDF5 embedding store to write (e.g. embeddings/beats-lora.h5).", recipe=False)
    batch_size: int = option(16, "Clips per forward pass.", recipe=False)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU).", recipe=False)
    seconds: float | None = option(None, "Pad or cut clips to this many seconds (default: as in training).")
    name: str | None = option(None, "Model name recorded in the store (default: the model folder's name).")
    channel: str | None = option(None, CHANNEL_HELP + VIEWS_HELP + " (default: the model's training channel; left for the frozen model)", choices=ViewChannel)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse anything but exactly one of --model and --backbone, --pretrained with --model, and values out of range."""
        if (self.model is None) == (self.backbone is None):
            raise AsdError("give either --model (a fine-tuned model folder) or --backbone (the frozen model)")
        if self.model is not None and self.pretrained is not None:
            raise AsdError("--pretrained belongs to the frozen model (--backbone), not to --model")
        at_least(self, 0, "layer")
        check_seed(self)
        at_least(self, 1, "batch_size")
        positive(self, "seconds")


@dataclass(kw_only=True)
class DetectConfig(ReadsData):
    """asdtool detect: Score every clip by its cosine distance to the nearest training embedding (source + SMOTE-balanced target)."""

    SECTION = Section("detect")

    embeddings: Path = option(help="Embedding store (HDF5) written by `asdtool embed`.", recipe=False)
    out: Path = option(help="Score folder to write: official anomaly_score_*_test.csv, the _train.csv files (training clips scored leave-one-out, for decision thresholds) and scores.h5.", recipe=False)
    k: int = option(1, "Score = mean cosine distance to the k nearest training embeddings (the paper: 1).")
    smote_ratio: float = option(1.0, "SMOTE oversamples the target-domain training embeddings to this many times the source count (1 balances the domains; 0 disables).")
    smote_k: int = option(5, "Neighbours SMOTE interpolates between (clipped to target clips - 1).")
    seed: int = option(0, "Random seed of SMOTE: the scores are deterministic for a seed.")
    normalise: str = option("none", "Domain-wise score normalisation, in the domain of each clip's nearest training embedding (SMOTE ones are target): none (raw distance), domain-z (standardised by that domain's leave-one-out training scores) or local-density (divided by that neighbour's mean distance to its --density-k nearest training clips of its domain).", choices=Normalise)
    density_k: int = option(2, "local-density: neighbours of the density radius, clipped to the domain's clips (2: one near-duplicate cannot shrink it to 0).")
    data_root: Path | None = option(None, "Refuse the store unless it was built from this data root's clip list.", recipe=False)

    def validate(self) -> None:
        """Refuse --k, --smote-k or --density-k below 1, a negative --smote-ratio and a seed out of range."""
        at_least(self, 1, "k", "smote_k", "density_k")
        at_least(self, 0, "smote_ratio")
        check_seed(self)


@dataclass(kw_only=True)
class BaselineConfig(ReadsData):
    """asdtool baseline: Score clips with a reference detector: log-mel 1-NN cosine distance, or the DCASE organisers' autoencoder.

    The autoencoder options default to the organisers' settings (dcase2023_task2_baseline_ae); on the
    small synthetic default data they give about 80 times fewer training steps, and about 300 epochs
    reach the plateau of the validation loss there (measured in asdtool.models.autoencoder).
    """

    SECTION = Section("baseline")

    data_root: Path = option(help="DCASE data root holding <machine>/train and <machine>/test.", recipe=False)
    out: Path = option(help="Score folder to write (official anomaly_score_*.csv files).", recipe=False)
    seconds: float | None = option(None, "Pad or cut every clip to this many seconds (default: keep each clip's length).")
    machine: list[str] = option([], "Only this machine type (repeatable; default: every machine folder).")
    method: str = option("logmel-mean", "logmel-mean (1-NN cosine on the time-mean log-mel), logmel-meanstd (on time mean and std) or autoencoder (the DCASE organisers' dense AE, one per machine type).",
                         choices=BaselineMethod)  # fmt: skip
    epochs: int = option(100, "Autoencoder: training epochs (the default is the organisers').")
    batch_size: int = option(256, "Autoencoder: vectors per batch.")
    lr: float = option(1e-3, "Autoencoder: Adam learning rate.")
    validation_split: float = option(0.1, "Autoencoder: fraction of the training vectors held out for the logged validation loss.")
    seed: int = option(0, "Autoencoder: seed of the initialisation, validation split and batch order; the same seed gives byte-identical scores.")
    channel: str = option("left", CHANNEL_HELP, choices=Channel)

    def validate(self) -> None:
        """Refuse values out of range (clip length and lr > 0, epochs >= 1, batch size >= 2, validation split in [0, 1), seed)."""
        positive(self, "seconds", "lr")
        at_least(self, 1, "epochs")
        at_least(self, 2, "batch_size")  # BatchNorm trains on 2 vectors or more
        if not 0 <= self.validation_split < 1:
            raise AsdError(f"--validation-split must lie in [0, 1), got {self.validation_split}")
        check_seed(self)


@dataclass(kw_only=True)
class EnsembleConfig(ReadsData):
    """asdtool ensemble: Fuse score folders linearly after per-machine z-normalisation; --search grid-searches the weights."""

    SECTION = Section("ensemble", named=True)

    scores: list[Path] = option([], "Score folder of one model; repeat the option per model: --scores scores/a --scores scores/b.")
    out: Path = option(help="Folder for the fused anomaly_score_*.csv files (and scores.h5 when every input has one).", recipe=False)
    weights: list[float] = option([], "Weight of each --scores folder, in the same order; repeat it. Non-negative, positive sum.")
    search: bool = option(False, "Grid-search the weights on the dev set (needs --data-root) and fuse with the best.")
    data_root: Path | None = option(None, "Dev data root: ground truth for --search, or for printing the fused metrics.", recipe=False)
    step: float = option(0.1, "Grid step of --search: weights in {0, step, 2 step, ...} summing to 1.")
    top: int = option(10, "How many of the best weight vectors --search prints and writes.")
    search_out: Path | None = option(None, 'Write the --search result as JSON: {"models", "best": {"weights", "official_score"}, "top"}.', recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse no --scores, and not exactly one of --weights and --search.

        --search needs --data-root, --search-out needs --search, and --top is at least 1.
        """
        if not self.scores:
            raise AsdError("give at least one --scores folder")
        if self.search and self.weights:
            raise AsdError("give --weights or --search, not both")
        if not self.search and not self.weights:
            raise AsdError("give one --weights per --scores folder, or --search with --data-root")
        if self.search and self.data_root is None:
            raise AsdError("--search needs --data-root (the dev set whose official score it maximises)")
        if self.search_out is not None and not self.search:
            raise AsdError("--search-out needs --search")
        at_least(self, 1, "top")


@dataclass(kw_only=True)
class EvaluateConfig(ReadsData):
    """asdtool evaluate: Compute the official DCASE Task 2 metrics (AUC source/target, pAUC, harmonic means) of a score folder."""

    SECTION = Section("evaluate")

    scores: Path = option(help="Folder of anomaly_score_<machine>_section_NN_test.csv files.", recipe=False)
    data_root: Path | None = option(None, "Dev data root: ground truth from the test-clip names.", recipe=False)
    ground_truth: Path | None = option(None, "Organisers' ground-truth folder (ground_truth_data/, ground_truth_domain/, ground_truth_attributes/).", recipe=False)
    out: Path | None = option(None, "Write the metrics as JSON here (fractions).", recipe=False)
    decisions: bool = option(False, "Also write decision_result_<machine>_section_NN_test.csv: anomalous when the score exceeds the --decision-quantile of a gamma fitted to the _train.csv scores.")
    decisions_dir: Path | None = option(None, "Folder for the decision files (default: the score folder).", recipe=False)
    decision_quantile: float = option(0.9, "Gamma quantile of the decision threshold.")
    name: str | None = option(None, "Title of the printed table (default: the score folder's name).")
    roc: Path | None = option(None, "Write ROC curves here: roc_<machine>.csv (fpr,tpr over all test clips), for dvc plots.", recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse anything but exactly one of --data-root and --ground-truth, and a decision quantile outside (0, 1)."""
        if (self.data_root is None) == (self.ground_truth is None):
            raise AsdError("give exactly one of --data-root (dev names) or --ground-truth (organisers' folder)")
        if not 0.0 < self.decision_quantile < 1.0:
            raise AsdError(f"--decision-quantile must lie in (0, 1), got {self.decision_quantile}")


@dataclass(kw_only=True)
class SubmitConfig(ReadsData):
    """asdtool submit: Write a DCASE Task 2 challenge submission folder (score and decision files of every eval section, <label>.meta.yaml), or --check one.

    A clip is decided anomalous when its score exceeds the --decision-quantile of a gamma distribution
    fitted to its section's training-clip scores (the organisers' rule). The folder is written beside
    --out, checked like --check does, and renamed into place only when valid.
    """

    SECTION = Section("submit")

    scores: Path | None = option(None, "Score folder of the system (asdtool detect or ensemble) holding anomaly_score_<machine>_section_NN_test.csv and _train.csv of every eval section.", recipe=False)
    data_root: Path = option(help="Eval data root: the <machine>/test clips the submission must score, each exactly once.", recipe=False)
    out: Path | None = option(None, "Submission folder to write, named by its label: submission/<label>.", recipe=False)
    label: str | None = option(None, "Submission label, Lastname_Institute_task2_N. (default: the --out folder's name, which it must equal)")
    decision_quantile: float = option(0.9, "Gamma quantile of the decision threshold (the organisers' decision_threshold).")
    meta_params: Path | None = option(None, "YAML of the meta file's own values, shaped like it: submission: (name, abbreviation, authors) and system: (description, complexity, source_code). Values left out are written as empty strings.", recipe=False)
    dev_metrics: Path | None = option(None, "Dev-set metrics JSON of the same system (asdtool evaluate --out): the results: section of the meta file.", recipe=False)
    check: Path | None = option(None, "Check this submission folder against --data-root instead of writing one (give no --scores or --out).", recipe=False)
    force: bool = option(False, "Replace an existing --out (a folder of submission files only).", recipe=False)

    def validate(self) -> None:
        """Refuse --check with --scores or --out, a submission to write without both, and a decision quantile outside (0, 1)."""
        if self.check is not None:
            if self.scores is not None or self.out is not None:
                raise AsdError("--check reads an existing submission folder; give it without --scores and --out")
        elif self.scores is None or self.out is None:
            raise AsdError("give --scores and --out to write a submission, or --check FOLDER to check one")
        if not 0.0 < self.decision_quantile < 1.0:
            raise AsdError(f"--decision-quantile must lie in (0, 1), got {self.decision_quantile}")


@dataclass(kw_only=True)
class ReportConfig:
    """asdtool report: Print and write the paper-style tables of everything evaluated."""

    SECTION = Section("report")

    metrics_dir: Path = option(help="Folder of <name>.json files written by asdtool evaluate --out.", recipe=False)
    out: Path = option(help="Folder for the Markdown tables (single_models.md, systems.md).", recipe=False)
    model: list[str] = option([], "A single model to list in the Table 1 layout (repeatable).")
    system: list[str] = option([], "A system to list in the Table 4 layout (repeatable).")

    def validate(self) -> None:
        """Refuse a report that names no --model and no --system."""
        if not self.model and not self.system:
            raise AsdError("name at least one --model or --system")


NORMALISE_HELP = "Domain-wise score normalisation, as detect's --normalise (give the settings detect used, and the bundle scores as detect did): none, domain-z or local-density."


@dataclass(kw_only=True)
class ExportConfig:
    """asdtool export: Write one detector bundle (.asd): a fine-tuned model, or a system of several with their weights, its memory banks, normalisation and decision thresholds.

    The detector settings are detect's; give the ones detect used and a clip scored through the
    bundle gets the score detect gave it.
    """

    SECTION = Section("export")

    model: list[Path] = option(help="Model folder written by asdtool finetune, or `frozen` for the frozen model its --embeddings store records (repeat for a system's members).", recipe=False)
    embeddings: list[Path] = option(help="Embedding store of each --model, in the same order: its training clips are the memory bank.", recipe=False)
    out: Path = option(help="Bundle file to write (.asd: safetensors tensors + JSON metadata, no pickle).", recipe=False)
    weights: list[float] = option([], "A system's fusion weight per --model (z-normalised linear fusion, as asdtool ensemble).")
    search: Path | None = option(None, "Take the weights from an ensemble --search-out JSON (its best weights; its models must be the stores' model names, in order).", recipe=False)
    k: int = option(1, "Score = mean cosine distance to the k nearest training embeddings (detect's --k).")
    smote_ratio: float = option(1.0, "detect's --smote-ratio.")
    smote_k: int = option(5, "detect's --smote-k.")
    seed: int = option(0, "detect's --seed (of SMOTE).")
    normalise: str = option("none", NORMALISE_HELP, choices=Normalise)
    density_k: int = option(2, "detect's --density-k (local-density).")
    decision_quantile: float = option(0.9, "Gamma quantile of each section's decision threshold, fitted to its training clips' scores (as submit).")
    quantize: str = option("none", "int8: score with PyTorch dynamic int8 quantisation of the linear layers on CPU (the weights stay float32 in the file; GPUs score in float).", choices=Quantize)
    sign_key: Path | None = option(None, SIGN_HELP, recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse values out of range, not one --embeddings per --model, and --weights together with --search."""
        at_least(self, 1, "k", "smote_k", "density_k")
        check_seed(self)
        if len(self.model) != len(self.embeddings):
            raise AsdError(f"give one --embeddings store per --model ({len(self.model)} models, {len(self.embeddings)} stores)")
        if self.weights and self.search is not None:
            raise AsdError("give --weights or --search, not both")
        if not 0.0 < self.decision_quantile < 1.0:
            raise AsdError(f"--decision-quantile must lie strictly between 0 and 1, got {self.decision_quantile}")


@dataclass(kw_only=True)
class ScoreConfig:
    """asdtool score: Score recordings with a detector bundle: per window and per recording, with the section's threshold and decision.

    The machine type of a file is the nearest folder above it named as one of the bundle's machine
    types (the DCASE layout <machine>/test/...), or --machine; its section comes from the file name
    (section_NN_..., id_NN_...), --section, or is the machine type's only section. Exit code 2 with
    --fail-on-anomaly when any recording is anomalous.
    """

    SECTION = Section("score")

    bundle: Path = option(help="Detector bundle written by asdtool export.", flag="BUNDLE", positional=True, recipe=False)
    paths: list[str] = option(help="Audio files, folders (every .wav/.flac below), glob patterns, or - for one recording's bytes on stdin.", flag="PATH...", positional=True, recipe=False)
    machine: str | None = option(None, "Machine type of every recording. (default: from each file's folders)")
    section: str | None = option(None, "Section of every recording, e.g. 00. (default: from each file name)")
    hop: float | None = option(None, "Seconds between window starts of a recording longer than the bundle's clip length. (default: the clip length)")
    aggregate: str = option("max", "A recording's score from its windows': max or mean.", choices=Aggregate)
    out: Path | None = option(None, "Write the results: .csv (file,machine,section,score,threshold,decision) or .json (with every window).", recipe=False)
    fail_on_anomaly: bool = option(False, "Exit with code 2 when any recording is anomalous (for scripts and CI).", recipe=False)
    log: Path | None = option(None, "Append every window's result to this folder's scores.csv (time, file, machine, section, window, start, score, threshold, decision), for asdtool drift.", recipe=False)
    plot: Path | None = option(None, "Folder for one PNG per recording of several windows: its score over time and the threshold.", recipe=False)
    batch_size: int = option(16, "Windows per forward pass.", recipe=False)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    threads: int | None = option(None, "CPU threads of torch. (default: torch's choice)", recipe=False)
    max_seconds: float = option(MAX_SECONDS, MAX_SECONDS_HELP, recipe=False)
    verify_key: Path | None = option(None, VERIFY_HELP, recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse values out of range, an --out other than .csv or .json, and a --section other than two digits."""
        within(self, "batch_size", 1, MAX_BATCH)
        within(self, "threads", 1, MAX_THREADS)
        check_hop(self)
        within(self, "max_seconds", 0.0, MAX_RECORDING, above=True, unit=" seconds")
        if self.out is not None and self.out.suffix.lower() not in (".csv", ".json"):
            raise AsdError(f"--out must end in .csv or .json, got {self.out.name}")
        if self.section is not None and not re.fullmatch(r"\d{2}", self.section):
            raise AsdError(f"--section must be two digits such as 00, got {quote(self.section)}")


@dataclass(kw_only=True)
class ServeConfig:
    """asdtool serve: Serve a detector bundle over HTTP: POST /score (a WAV or FLAC file), GET /health, GET /info.

    The bundle is loaded once; requests arriving together are scored in one batch. A file's machine
    type and section come from its file name (<machine>/.../section_NN_...wav, as on disk) or from
    the query (?machine=&section=).
    """

    SECTION = Section("serve")

    bundle: Path = option(help="Detector bundle written by asdtool export.", flag="BUNDLE", positional=True, recipe=False)
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0: every interface).", recipe=False)
    port: int = option(8000, "TCP port to listen on.", recipe=False)
    max_bytes: int = option(50_000_000, "Largest request body accepted, in bytes (larger: HTTP 413).", recipe=False)
    batch_size: int = option(16, "Windows per forward pass; requests waiting together share batches.", recipe=False)
    max_wait_ms: float = option(5.0, "How long a request waits for others to fill its batch, in milliseconds.", recipe=False)
    hop: float | None = option(None, "Seconds between window starts of a recording longer than the bundle's clip length. (default: the clip length)")
    aggregate: str = option("max", "A recording's score from its windows': max or mean.", choices=Aggregate)
    log: Path | None = option(None, "Append every window's result to this folder's scores.csv, as asdtool score --log.", recipe=False)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto.", recipe=False)
    threads: int | None = option(None, "CPU threads of torch. (default: torch's choice)", recipe=False)
    max_seconds: float = option(MAX_SECONDS, MAX_SECONDS_HELP + " Longer: HTTP 413.", recipe=False)
    verify_key: Path | None = option(None, VERIFY_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse a port, body size limit, batch size, wait, thread count, hop or length limit out of range."""
        within(self, "port", 1, 65535)
        within(self, "max_bytes", 1, 2**31)
        within(self, "batch_size", 1, MAX_BATCH)
        within(self, "max_wait_ms", 0.0, 10_000.0, unit=" milliseconds")
        within(self, "threads", 1, MAX_THREADS)
        check_hop(self)
        within(self, "max_seconds", 0.0, MAX_RECORDING, above=True, unit=" seconds")


@dataclass(kw_only=True)
class DriftConfig:
    """asdtool drift: Compare the recent scores of a --log folder with the bundle's training scores, per machine type and section (table and PNG)."""

    SECTION = Section("drift")

    log: Path = option(help="Folder written by asdtool score --log or serve --log (scores.csv, bundle.json).", flag="LOG", positional=True, recipe=False)
    last: int = option(500, "Recent windows per machine type and section to compare (the latest by time).")
    plot: Path | None = option(None, "PNG to write: per machine type, the share of windows above the threshold over time and the score quantiles against the training ones. (default: <LOG>/drift.png)", recipe=False)
    out: Path | None = option(None, "Also write the table as JSON.", recipe=False)
    force: bool = option(False, FORCE_HELP, recipe=False)

    def validate(self) -> None:
        """Refuse --last below 1."""
        at_least(self, 1, "last")
