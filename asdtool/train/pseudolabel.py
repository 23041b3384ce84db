"""Pseudo attribute labels for machine types without attributes (the paper's section 2.4, stage one).

A model fine-tuned on the available attributes (the -full model, where a machine type without
attributes is one class) embeds the training clips of every machine type whose clips all say
`noAttribute`. Agglomerative hierarchical clustering (AHC) of those embeddings, per machine type,
gives each clip a pseudo attribute; `finetune --labels pseudo` then re-trains from the pre-trained
checkpoint with the classes `<machine>/pseudo_<k>`.

Clustering: Ward linkage on L2-normalised embeddings. On unit vectors the squared Euclidean
distance is 2 - 2 cos, so Ward merges the pair of clusters that least increases the within-cluster
cosine dispersion: the geometry the ArcFace head trains and the cosine kNN detector scores in.
Ward also gives clusters of comparable size, where single or average linkage on few, noisy
embeddings tends to leave a few singletons (classes of one clip) beside one giant cluster; on the
synthetic data it matched or beat average and complete (cosine) linkage against the hidden
attributes. Silhouette scores use the same (Euclidean, unit-vector) geometry.

Counts: the paper chose them by looking at UMAP plots (Table 2: gearbox 20, slider 20, ToyTrain
25 on dev), so each run also draws one 2-D UMAP scatter per machine type. A machine type without
attributes that is given no count gets the count with the best silhouette over `k_range`
(recorded as `k_from: "silhouette"`), so the command also runs unattended on a new data set.
Cluster ids are numbered by size, largest first (ties: the cluster of the earliest clip first),
so the same clustering always writes the same file.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from asdtool.core.atomic import atomic_dir, atomic_path, write_json
from asdtool.data import dcase
from asdtool.data.hidden import HIDDEN_ATTRIBUTES_FILE, read_correspondence_folder, read_hidden_attributes
from asdtool.core.errors import AsdError
from asdtool.core.vectors import l2_normalise
from asdtool.config.choices import Linkage

DEFAULT_K_RANGE = range(2, 31)
LABELS_HEADER = ("file_name", "machine", "pseudo_label")
UMAP_NEIGHBOURS = 15
_COUNT = re.compile(r"^\s*(?P<machine>[^=\s]+)\s*=\s*(?P<k>-?\d+)\s*$")
_RANGE = re.compile(r"^\s*(?P<lo>-?\d+)\s*-\s*(?P<hi>-?\d+)\s*$")


# ----------------------------------------------------------------------------- option parsing


def parse_cluster_counts(items: Sequence[str]) -> dict[str, int]:
    """Return {machine: clusters} from `machine=K` strings (`--clusters gearbox=20`)."""
    counts: dict[str, int] = {}
    for item in items:
        m = _COUNT.match(item)
        if not m:
            raise AsdError(f"--clusters {item!r} is not MACHINE=COUNT (e.g. gearbox=20)")
        machine, k = m["machine"], int(m["k"])
        if machine in counts and counts[machine] != k:
            raise AsdError(f"--clusters names {machine} twice ({counts[machine]} and {k})")
        counts[machine] = k
    return counts


def parse_k_range(text: str) -> range:
    """Return the cluster counts `LO-HI` (both included) that `--suggest-range` names."""
    m = _RANGE.match(text)
    if not m:
        raise AsdError(f"--suggest-range {text!r} is not LO-HI (e.g. 2-30)")
    lo, hi = int(m["lo"]), int(m["hi"])
    if lo < 2 or hi < lo:
        raise AsdError(f"--suggest-range {text!r} must satisfy 2 <= LO <= HI")
    return range(lo, hi + 1)


# ----------------------------------------------------------------------------- what to cluster


def unattributed_machines(dataset: dcase.Dataset) -> list[str]:
    """Return the machine types whose training clips all say `noAttribute` (those that need pseudo labels)."""
    out = []
    for machine in dataset.machines:
        clips = dataset.select(machine, "train")
        if clips and all(c.attribute_string == dcase.NO_ATTRIBUTE for c in clips):
            out.append(machine)
    return out


def plan_counts(dataset: dcase.Dataset, counts: Mapping[str, int]) -> dict[str, int | None]:
    """Return {machine: clusters, or None for "choose by silhouette"} for every type without attributes.

    Raises AsdError for a count naming a machine type absent from the data or one with attributes,
    a count below 2 or above the machine's training clips, and for data with no type to cluster.
    """
    root = dataset.root
    folder = dataset.folder
    present = dataset.machines
    targets = unattributed_machines(dataset)
    for machine, k in counts.items():
        if machine not in present:
            raise AsdError(f"--clusters names {machine}, which has no machine folder (found {', '.join(present)})", root)
        n = len(dataset.select(machine, "train"))
        if n == 0:
            raise AsdError(f"--clusters names {machine}, which has no training clips", folder(machine))
        if machine not in targets:
            raise AsdError(
                f"--clusters names {machine}, whose training clips carry attributes; pseudo labels are for "
                f"machine types without attributes ({', '.join(targets) or 'none here'})",
                folder(machine),
            )
        if k < 2:
            raise AsdError(f"--clusters {machine}={k}: need at least 2 clusters")
        if k > n:
            raise AsdError(f"--clusters {machine}={k}: more clusters than its {n} training clips", folder(machine) / "train")
    if not targets:
        raise AsdError("no machine type without attributes (all training clips noAttribute) to pseudo-label", root)
    return {m: counts.get(m) for m in targets}


# ----------------------------------------------------------------------------- clustering


def cluster(embeddings: np.ndarray, k: int, linkage: str = "ward") -> np.ndarray:
    """Return AHC cluster ids [N] in 0..k-1 of L2-normalised `embeddings`, numbered largest cluster first."""
    from sklearn.cluster import AgglomerativeClustering

    if linkage not in Linkage.values():
        raise AsdError(f"unknown linkage {linkage!r}; use one of {Linkage.listed()}")
    n = len(embeddings)
    if not 2 <= k <= n:
        raise AsdError(f"cannot make {k} clusters of {n} embeddings (need 2 <= clusters <= clips)")
    metric = "euclidean" if linkage == "ward" else "cosine"
    raw = AgglomerativeClustering(n_clusters=k, linkage=linkage, metric=metric).fit_predict(embeddings)
    return _number_by_size(raw)


def _number_by_size(raw: np.ndarray) -> np.ndarray:
    ids, first, sizes = np.unique(raw, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-sizes[i], first[i]))
    rename = np.empty(ids.max() + 1, dtype=np.int64)
    rename[ids[order]] = np.arange(len(ids))
    return rename[raw]


def silhouette(embeddings: np.ndarray, labels: np.ndarray) -> float | None:
    """Return the mean silhouette of a clustering (Euclidean on the unit vectors); None when undefined."""
    from sklearn.metrics import silhouette_score

    k = len(np.unique(labels))
    if not 2 <= k <= len(labels) - 1:
        return None
    return float(silhouette_score(embeddings, labels, metric="euclidean"))


@dataclass
class Suggestion:
    """Silhouette of the AHC clustering for each cluster count tried, and the best count."""

    silhouette: dict[int, float]
    best_k: int | None  # None when no count in the range fits the clips


def suggest_clusters(embeddings: np.ndarray, k_range: Sequence[int] = DEFAULT_K_RANGE, linkage: str = "ward") -> Suggestion:
    """Return the silhouette of the AHC clustering for every k in `k_range` (2 <= k <= N-1) and the best k.

    Ties go to the smaller k (fewer, larger pseudo classes).
    """
    x = l2_normalise(embeddings)
    scores: dict[int, float] = {}
    for k in k_range:
        if 2 <= k <= len(x) - 1:
            s = silhouette(x, cluster(x, k, linkage))
            if s is not None:
                scores[int(k)] = s
    best = max(scores, key=lambda k: (scores[k], -k)) if scores else None
    return Suggestion(scores, best)


def adjusted_rand(labels: np.ndarray, truth: Sequence[str]) -> float:
    """Return the adjusted Rand index of cluster ids against true attribute strings (1 = identical, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(list(truth), labels))


# ----------------------------------------------------------------------------- UMAP plots


def umap_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return a seeded 2-D UMAP [N, 2] of L2-normalised embeddings (a PCA projection up to UMAP_NEIGHBOURS points)."""
    x = l2_normalise(embeddings)
    n = len(x)
    if n <= UMAP_NEIGHBOURS:
        # with no more points than a neighbourhood, UMAP's graph joins every pair and its layout
        # shows nothing a linear projection does not; PCA also spares numba's compilation (~8 s)
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))).astype(np.float32)
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=UMAP_NEIGHBOURS,
        min_dist=0.1,
        metric="euclidean",  # unit vectors: the order of cosine distances
        init="spectral",
        random_state=seed,
        n_jobs=1,  # a seeded UMAP runs on one thread anyway; saying so silences its warning
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UMAP's notes about graph connectivity and numba
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def plot_clusters(path: str | Path, xy: np.ndarray, labels: np.ndarray, domains: Sequence[str | None], title: str) -> None:
    """Write a PNG scatter of 2-D points: colour = cluster, marker = domain (o source, ^ target)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    k = int(labels.max()) + 1 if len(labels) else 0
    palette = colormaps["tab20"](np.arange(k) % 20) if k <= 20 else colormaps["turbo"](np.linspace(0.05, 0.95, k))
    fig = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot state
    ax = fig.add_subplot()
    domains = np.array([d or "unknown" for d in domains])
    markers = {"source": "o", "target": "^", "unknown": "s"}
    for domain, marker in markers.items():
        sel = domains == domain
        if sel.any():
            size = 18 if domain == "source" else 46
            ax.scatter(xy[sel, 0], xy[sel, 1], c=palette[labels[sel]], marker=marker, s=size,
                       edgecolors="black" if domain == "target" else "none", linewidths=0.6)  # fmt: skip
    handles = [
        Line2D([], [], linestyle="", marker=markers[d], color="grey", markeredgecolor="black" if d == "target" else "grey", label=d)
        for d in markers
        if (domains == d).any()
    ]
    for c in range(k):  # the cluster id at its members' median, to read off the plot
        sel = labels == c
        if sel.any():
            cx, cy = np.median(xy[sel], axis=0)
            ax.annotate(str(c), (cx, cy), fontsize=7, ha="center", va="center", alpha=0.8)
    ax.legend(handles=handles, loc="best", fontsize=8, title="domain", title_fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    fig.tight_layout()
    from asdtool.core.outputs import PNG_METADATA

    fig.savefig(path, format="png", metadata=PNG_METADATA)


# ----------------------------------------------------------------------------- the stage


@dataclass
class MachineClusters:
    """The pseudo labels of one machine type and what a user needs to judge them."""

    machine: str
    clips: list[dcase.Clip]
    labels: np.ndarray  # int64 [N], cluster id per clip, 0 = largest cluster
    k: int
    k_from: str  # "given" (--clusters) | "silhouette" (best of the suggestion range)
    silhouette: float | None
    ari: float | None  # against the hidden attributes (hidden_attributes.csv or the organisers' files), when known
    suggestion: Suggestion | None = None
    umap: np.ndarray | None = field(default=None, repr=False)  # float32 [N, 2]

    @property
    def sizes(self) -> list[int]:
        """Return the number of clips in each cluster, indexed by cluster id (0 to k - 1)."""
        return np.bincount(self.labels, minlength=self.k).tolist()

    @property
    def title(self) -> str:
        """Return the UMAP plot's title: machine type, k and how it was chosen, clips, silhouette and ARI when known."""
        how = "given" if self.k_from == "given" else "best silhouette"
        sil = "" if self.silhouette is None else f", silhouette {self.silhouette:.3f}"
        ari = "" if self.ari is None else f", ARI {self.ari:.3f}"
        return f"{self.machine}: {self.k} clusters ({how}) of {len(self.clips)} clips{sil}{ari}"


@dataclass
class PseudoLabels:
    """The result of `pseudo_label`: clusters per machine type and where they came from."""

    model: Path
    checkpoint_sha256: str
    data_roots: list[Path]
    linkage: str
    seconds: float
    seed: int
    machines: dict[str, MachineClusters]
    k_range: list[int] | None  # the counts tried for suggestions (None: no suggestion made)

    def rows(self) -> list[tuple[str, str, str]]:
        """Return the `file_name,machine,pseudo_label` rows, machine by machine in file-name order."""
        return [(c.file_name, m, str(int(k))) for m, mc in self.machines.items() for c, k in zip(mc.clips, mc.labels)]

    def summary(self) -> dict:
        """Return the JSON-ready summary: per machine clips, clusters, sizes, silhouette, ARI; model and sha256."""
        machines = {}
        for m, mc in self.machines.items():
            entry = {
                "clips": len(mc.clips),
                "clusters": mc.k,
                "k_from": mc.k_from,
                "cluster_sizes": mc.sizes,
                "silhouette": mc.silhouette,
                "ari": mc.ari,
            }
            if mc.suggestion is not None:
                entry["suggested_k"] = mc.suggestion.best_k
                entry["silhouette_by_k"] = {str(k): s for k, s in mc.suggestion.silhouette.items()}
            machines[m] = entry
        return {
            "model": str(self.model),
            "checkpoint_sha256": self.checkpoint_sha256,
            "data_root": ", ".join(dcase.root_label(r) for r in self.data_roots),
            "linkage": self.linkage,
            "seconds": self.seconds,
            "seed": self.seed,
            "suggest_range": None if not self.k_range else [min(self.k_range), max(self.k_range)],
            "hidden_truth": any(mc.ari is not None for mc in self.machines.values()),
            "machines": machines,
        }


def hidden_truth(dataset: dcase.Dataset, attribute_truth: str | Path | None) -> dict[tuple[str, str], str] | None:
    """Return {(machine, file_name): hidden attribute} to score the clusters with, or None when there is none.

    From the organisers' correspondence folder (`attribute_truth`, for the first data root's machine
    types) or else from each data root's own hidden_attributes.csv (`asdtool synth` writes one); with
    several roots the machine types take their `<root>:` prefix, as the clips do.
    """
    roots = dataset.roots or [dataset.root]
    prefix = {r: f"{dcase.root_label(r)}{dcase.ROOT_SEPARATOR}" if len(roots) > 1 else "" for r in roots}
    if attribute_truth is not None:  # the organisers' correspondence files
        truth = read_correspondence_folder(attribute_truth)
        return {(prefix[roots[0]] + m, name): v for (m, name), v in truth.items()}
    hidden: dict[tuple[str, str], str] = {}
    found = False
    for root in roots:
        path = root / HIDDEN_ATTRIBUTES_FILE
        if path.is_file():
            found = True
            hidden.update({(prefix[root] + m, name): v for (m, name), v in read_hidden_attributes(path).items()})
    return hidden if found else None


def plot_name(machine: str) -> str:
    """Return the UMAP plot file of a machine type (`<root>:<machine>` flattened into one file name)."""
    return machine.replace(dcase.ROOT_SEPARATOR, "__").replace("/", "_") + ".png"


def pseudo_label(
    model: str | Path,
    data_root: str | Path | Sequence[str | Path],
    counts: Mapping[str, int] | None = None,
    *,
    seconds: float | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
    linkage: str = "ward",
    suggest: bool = False,
    k_range: Sequence[int] = DEFAULT_K_RANGE,
    plots: bool = True,
    progress: Callable[[int, int], None] | None = None,
    reading: dcase.Reading = dcase.Reading(),
    attribute_truth: str | Path | None = None,
) -> PseudoLabels:
    """Return pseudo labels of the training clips of every machine type without attributes.

    `model` is a finished `asdtool finetune` folder (stage one); `counts` maps machine types to
    cluster counts (absent types: best silhouette over `k_range`). `suggest` computes the silhouette
    over `k_range` for every type; `plots` computes the 2-D UMAP (seeded by `seed`) for the plots;
    `progress(clips_done_now, total_clips)` follows the embedding. Nothing is written here.
    """
    from asdtool.detect.embed import embed_clips
    from asdtool.models.checkpoint import load_finetuned

    if linkage not in Linkage.values():
        raise AsdError(f"unknown linkage {linkage!r}; use one of {Linkage.listed()}")
    if batch_size < 1:
        raise AsdError(f"--batch-size must be at least 1, got {batch_size}")
    if seconds is not None and not seconds > 0:
        raise AsdError(f"--seconds must be positive, got {seconds}")
    k_range = sorted({int(k) for k in k_range})
    if not k_range or k_range[0] < 2:
        raise AsdError("the suggestion range must hold cluster counts of at least 2")
    dataset = dcase.scan_roots([data_root] if isinstance(data_root, (str, Path)) else data_root, reading=reading)
    plan = plan_counts(dataset, dict(counts or {}))
    hidden = hidden_truth(dataset, attribute_truth)
    finetuned = load_finetuned(model, device)
    seconds = float(seconds if seconds is not None else finetuned.config.seconds)
    device_now = next(finetuned.model.parameters()).device

    clips = {m: dataset.select(m, "train") for m in plan}
    total = sum(len(c) for c in clips.values())
    results: dict[str, MachineClusters] = {}
    for machine, k in plan.items():
        emb = embed_clips(
            finetuned.model, clips[machine], seconds, batch_size, device_now,
            progress=(lambda n: progress(n, total)) if progress else None, channel=finetuned.config.channel,
        )  # fmt: skip
        x = l2_normalise(emb)
        suggestion = suggest_clusters(x, k_range, linkage) if (suggest or k is None) else None
        k_from = "given"
        if k is None:
            if suggestion is None or suggestion.best_k is None:
                raise AsdError(
                    f"{machine} has {len(x)} training clips: too few to choose a count by silhouette in "
                    f"{k_range[0]}-{k_range[-1]}; give --clusters {machine}=K",
                    dataset.folder(machine) / "train",
                )
            k, k_from = suggestion.best_k, "silhouette"
        labels = cluster(x, k, linkage)
        ari = None
        if hidden is not None:
            truth = [hidden.get((machine, c.file_name)) for c in clips[machine]]
            if all(t is not None for t in truth):
                ari = adjusted_rand(labels, truth)  # type: ignore[arg-type]
        results[machine] = MachineClusters(
            machine, clips[machine], labels, k, k_from, silhouette(x, labels), ari, suggestion,
            umap_2d(x, seed) if plots else None,
        )  # fmt: skip
    return PseudoLabels(
        model=Path(model),
        checkpoint_sha256=finetuned.checkpoint_sha256,
        data_roots=dataset.roots or [dataset.root],
        linkage=linkage,
        seconds=seconds,
        seed=seed,
        machines=results,
        k_range=k_range if (suggest or any(mc.k_from == "silhouette" for mc in results.values())) else None,
    )


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class OutputPaths:
    """Where the pseudo-label files go: the labels CSV, the UMAP plot folder and the summary JSON."""

    labels: Path
    plots: Path
    summary: Path


def output_paths(out: str | Path, plots: str | Path | None = None, inputs: Sequence[str | Path] = (),
                 force: bool = False) -> OutputPaths:  # fmt: skip
    """Return where the labels CSV, the UMAP folder (default `<stem>_umap/`) and `<stem>.summary.json` go.

    Each is checked by the output rule (`asdtool.core.outputs`) against the command's `inputs`.
    """
    from asdtool.core import outputs

    out = Path(out)
    plots = Path(plots) if plots is not None else out.with_name(f"{out.stem}_umap")
    summary = out.with_name(f"{out.stem}.summary.json")
    outputs.check_file(out, outputs.PSEUDO_LABELS, inputs=inputs, force=force)
    outputs.check_folder(plots, outputs.named(lambda name: name.endswith(".png"), outputs.PNG), inputs=inputs)
    outputs.check_file(summary, outputs.PSEUDO_SUMMARY, inputs=inputs, force=force)
    if len({out.resolve(), plots.resolve(), summary.resolve()}) < 3:
        raise AsdError("--plots must differ from the labels and summary files", plots)
    return OutputPaths(out, plots, summary)


def write_labels_csv(path: str | Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """Write `file_name,machine,pseudo_label` rows atomically (the file `finetune --pseudo-labels` reads)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(LABELS_HEADER)
            writer.writerows(rows)


def write_outputs(result: PseudoLabels, paths: OutputPaths) -> None:
    """Write the UMAP plots folder, the summary JSON and the labels CSV, each atomically (labels last)."""
    if any(mc.umap is not None for mc in result.machines.values()):
        with atomic_dir(paths.plots) as tmp:
            for m, mc in result.machines.items():
                if mc.umap is not None:
                    plot_clusters(tmp / plot_name(m), mc.umap, mc.labels, [c.domain for c in mc.clips], mc.title)
    summary = result.summary()
    summary["labels"] = str(paths.labels)
    summary["plots"] = str(paths.plots) if any(mc.umap is not None for mc in result.machines.values()) else None
    write_json(paths.summary, summary)
    write_labels_csv(paths.labels, result.rows())


def pseudolabel_to_files(
    model: str | Path, data_root: str | Path | Sequence[str | Path], out: str | Path, clusters: Sequence[str] = (), plots: str | Path | None = None,
    suggest: bool = False, suggest_range: str = "2-30", linkage: str = "ward", seconds: float | None = None,
    batch_size: int = 16, device: str = "cpu", seed: int = 0, progress: Callable[[int, int], None] | None = None,
    reading: dcase.Reading = dcase.Reading(), attribute_truth: str | Path | None = None, force: bool = False,
) -> tuple[PseudoLabels, OutputPaths]:  # fmt: skip
    """Cluster, then write the labels CSV, the summary JSON and the UMAP plots; return the result and the paths."""
    from asdtool.core.outputs import files_of

    counts = parse_cluster_counts(clusters)
    k_range = parse_k_range(suggest_range)
    roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
    paths = output_paths(out, plots, inputs=[*files_of(model), *roots, attribute_truth], force=force)
    result = pseudo_label(model, data_root, counts, seconds=seconds, batch_size=batch_size, device=device, seed=seed,
                          linkage=linkage, suggest=suggest, k_range=k_range, plots=True, progress=progress,
                          reading=reading, attribute_truth=attribute_truth)  # fmt: skip
    write_outputs(result, paths)
    return result, paths
