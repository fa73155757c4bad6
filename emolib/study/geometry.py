"""The shape of the emotion space (the paper's section "Geometry").

What is computed, and the choices the paper leaves open (ours, written down):

* **Cosine matrix** of the emotion vectors at one layer, ordered by average-linkage hierarchical
  clustering on cosine distance (``1 - cos``) with scipy's optimal leaf ordering, so that
  neighbours in the ordering are similar and the blocks of the paper's Fig. 5 appear.
* **k-means, k = 10** (sklearn) on the *unit-normalised* vectors, i.e. clustering by direction,
  the same geometry the cosine matrix shows (the paper does not say; on raw vectors the
  emotions with the largest norms would pull the centroids). It is run with several seeds; the
  reported clustering is the lowest-inertia run, and **stability** is the mean pairwise adjusted
  Rand index (ARI) between the seeds' clusterings. With few emotions ``k = min(k, n - 1)``.
* **Agreement with the paper's clusters** (``emolib.emotions.paper_clusters()``, Table 12) by
  ARI, against a permutation baseline: our labels shuffled over the same words keep the cluster
  sizes and destroy the assignment, giving the ARI expected by chance (about 0) and its spread.
* **PCA** of the vectors (centred; not unit-normalised, as in the paper's "PCA on the vectors"),
  explained variance of PC1-PC3. **Sign convention**: a PC's sign is arbitrary, so it is fixed
  by anchor words that do *not* depend on the human norms being tested: PC1 is oriented so that
  pleasant anchors (happy, joyful, cheerful, delighted) score above unpleasant ones (sad,
  miserable, depressed, terrified); PC2 and PC3 so that high-arousal anchors (terrified,
  panicked, furious, ecstatic, excited) score above low-arousal ones (sleepy, tired, relaxed,
  calm, bored). Because the orientation is fixed before looking at the ratings, a negative r
  with human valence would be a real finding, not an artefact. When no anchor of one side is
  present (small subsets), the human ratings decide (r > 0) if at least 3 words are rated, else
  the emotion with the largest absolute score is made positive. The rule used is recorded.
* **RSA across depth**: the cosine matrix at ~14 evenly spaced layers in the central part of the
  model; two layers are compared by the cosine similarity of the off-diagonal upper triangles
  of their matrices (the paper's measure), optionally Pearson r.

Every function takes plain arrays (``[emotions, width]``) or an ``EmotionVectors``; figures are
drawn by the ``plot_*`` functions at the end, which only draw what they are given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emolib.stats import Correlation, PermutationBaseline, correlation, permutation_baseline

PLEASANT = ("happy", "joyful", "cheerful", "delighted")
UNPLEASANT = ("sad", "miserable", "depressed", "terrified")
HIGH_AROUSAL = ("terrified", "panicked", "furious", "ecstatic", "excited")
LOW_AROUSAL = ("sleepy", "tired", "relaxed", "calm", "bored")
#: PC index -> (positive anchors, negative anchors, meaning of the positive end)
DEFAULT_ANCHORS: dict[int, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    0: (PLEASANT, UNPLEASANT, "pleasant"),
    1: (HIGH_AROUSAL, LOW_AROUSAL, "high arousal"),
    2: (HIGH_AROUSAL, LOW_AROUSAL, "high arousal"),
}

#: The paper's geometry numbers (its section "Geometry").
PAPER = {
    "pc1_explained": 0.26,
    "pc2_explained": 0.15,
    "pc1_valence_r": 0.81,
    "pc2_arousal_r": 0.66,
    "n_norm_words": 45,
}


def _np(x) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float64)


def unit_rows(x) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    a = _np(x)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


# ---- similarity structure ---------------------------------------------------------------------
def cosine_matrix(vectors) -> np.ndarray:
    """``[n, n]`` cosine similarities between the rows of ``vectors [n, width]`` (float64)."""
    u = unit_rows(vectors)
    c = u @ u.T
    return np.clip(c, -1.0, 1.0)


@dataclass
class Ordering:
    """A hierarchical-clustering order of the emotions: ``order`` indexes the input rows."""

    order: list[int]
    linkage: np.ndarray | None
    method: str

    def names(self, emotions: Sequence[str]) -> list[str]:
        return [emotions[i] for i in self.order]


def hierarchical_order(cos: np.ndarray, method: str = "average") -> Ordering:
    """Order rows by agglomerative clustering on cosine distance, with optimal leaf ordering."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    c = _np(cos)
    n = c.shape[0]
    if n < 3:
        return Ordering(list(range(n)), None, method)
    d = np.clip(1.0 - c, 0.0, 2.0)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method=method, optimal_ordering=True)
    return Ordering([int(i) for i in leaves_list(z)], z, method)


def off_diagonal(mat: np.ndarray) -> np.ndarray:
    """The strictly upper-triangular entries of a square matrix, as a vector."""
    m = _np(mat)
    return m[np.triu_indices(m.shape[0], k=1)]


def nearest_neighbours(cos: np.ndarray, emotions: Sequence[str], words: Sequence[str], k: int = 5
                       ) -> dict[str, list[tuple[str, float]]]:
    """The ``k`` most similar other emotions of each word in ``words`` (by cosine)."""
    c = _np(cos)
    out = {}
    for w in words:
        if w not in emotions:
            continue
        i = list(emotions).index(w)
        idx = [j for j in np.argsort(-c[i]) if j != i][:k]
        out[w] = [(emotions[j], float(c[i, j])) for j in idx]
    return out


# ---- clusters -----------------------------------------------------------------------------------
def effective_k(k: int, n: int) -> int:
    """``min(k, n - 1)``, at least 1: k-means with as many clusters as points is meaningless."""
    return max(1, min(int(k), int(n) - 1))


@dataclass
class KMeansResult:
    """k-means over several seeds: the lowest-inertia labels and how stable the clustering is."""

    labels: list[int]
    k: int
    k_requested: int
    seeds: list[int]
    inertias: list[float]
    all_labels: list[list[int]]
    stability_ari: float  # mean pairwise ARI between the seeds' clusterings
    stability_min: float
    normalized: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def groups(self, emotions: Sequence[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for e, lab in zip(emotions, self.labels):
            out.setdefault(int(lab), []).append(e)
        return dict(sorted(out.items()))


def kmeans_clusters(vectors, k: int = 10, seeds: Sequence[int] = tuple(range(10)), normalize: bool = True,
                    n_init: int = 10) -> KMeansResult:
    """k-means (sklearn, k-means++) with each seed; keep the lowest inertia, report stability."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = unit_rows(vectors) if normalize else _np(vectors)
    n = x.shape[0]
    kk = effective_k(k, n)
    seeds = [int(s) for s in seeds] or [0]
    all_labels, inertias = [], []
    for s in seeds:
        if kk == 1:
            lab, inertia = np.zeros(n, dtype=int), float(((x - x.mean(0)) ** 2).sum())
        else:
            km = KMeans(n_clusters=kk, n_init=n_init, random_state=s).fit(x)
            lab, inertia = km.labels_, float(km.inertia_)
        all_labels.append([int(v) for v in lab])
        inertias.append(inertia)
    pairs = [adjusted_rand_score(all_labels[i], all_labels[j])
             for i in range(len(seeds)) for j in range(i + 1, len(seeds))]
    best = int(np.argmin(inertias))
    return KMeansResult(labels=all_labels[best], k=kk, k_requested=int(k), seeds=seeds, inertias=inertias,
                        all_labels=all_labels, stability_ari=float(np.mean(pairs)) if pairs else math.nan,
                        stability_min=float(np.min(pairs)) if pairs else math.nan, normalized=normalize)


def paper_labels(emotions: Sequence[str], clusters: dict[str, list[str]] | None = None) -> list[str | None]:
    """The paper's cluster name of each emotion (None if it is in no paper cluster)."""
    if clusters is None:
        from emolib.emotions import paper_clusters

        clusters = paper_clusters()
    of = {w: name for name, members in clusters.items() for w in members}
    return [of.get(e) for e in emotions]


@dataclass
class ClusterAgreement:
    """ARI between our clusters and the paper's, with its permutation-chance baseline."""

    ari: float
    baseline: PermutationBaseline | None
    n: int
    n_ours: int
    n_paper: int
    nmi: float
    table: dict[int, dict[str, int]] = field(default_factory=dict)  # our cluster -> paper name -> count
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["baseline"] = self.baseline.as_dict() if self.baseline else None
        return d


def compare_clusters(emotions: Sequence[str], labels: Sequence[int], clusters: dict[str, list[str]] | None = None,
                     n_perm: int = 1000, seed: int = 0) -> ClusterAgreement:
    """ARI of ``labels`` against the paper's clusters over the words both cover, vs chance.

    The chance baseline shuffles our labels over the same words (``n_perm`` times): the ARI a
    clustering with our cluster sizes gets when it knows nothing about the words.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ref = paper_labels(emotions, clusters)
    keep = [i for i, r in enumerate(ref) if r is not None]
    ours = np.asarray([int(labels[i]) for i in keep])
    theirs = [ref[i] for i in keep]
    table: dict[int, dict[str, int]] = {}
    for o, t in zip(ours, theirs):
        table.setdefault(int(o), Counter())[t] += 1
    table = {k: dict(v.most_common()) for k, v in sorted(table.items())}
    n = len(keep)
    if n < 3 or len(set(theirs)) < 2 or len(set(ours.tolist())) < 2:
        return ClusterAgreement(math.nan, None, n, len(set(ours.tolist())), len(set(theirs)), math.nan, table,
                                note="too few words or clusters for a meaningful ARI")
    ari = float(adjusted_rand_score(theirs, ours))
    base = permutation_baseline(lambda lab: adjusted_rand_score(theirs, lab), ours, n_perm=n_perm, seed=seed)
    nmi = float(normalized_mutual_info_score(theirs, ours))
    return ClusterAgreement(ari, base, n, len(set(ours.tolist())), len(set(theirs)), nmi, table)


def name_clusters(emotions: Sequence[str], labels: Sequence[int], clusters: dict[str, list[str]] | None = None
                  ) -> list[dict[str, Any]]:
    """For each of our clusters: its members, and the paper cluster most of them belong to."""
    ref = paper_labels(emotions, clusters)
    out = []
    for lab in sorted(set(int(v) for v in labels)):
        idx = [i for i, v in enumerate(labels) if int(v) == lab]
        counts = Counter(ref[i] for i in idx if ref[i] is not None)
        top, cnt = counts.most_common(1)[0] if counts else (None, 0)
        out.append({"cluster": lab, "size": len(idx), "paper_majority": top,
                    "majority_share": cnt / len(idx) if idx else math.nan,
                    "members": [emotions[i] for i in idx]})
    return out


# ---- PCA ----------------------------------------------------------------------------------------
@dataclass
class PCAResult:
    """PCA of the emotion vectors, signs fixed by :data:`DEFAULT_ANCHORS` (see module docstring)."""

    emotions: list[str]
    scores: np.ndarray  # [n, k]
    explained: np.ndarray  # [k] ratio of the total variance
    components: np.ndarray  # [k, width]
    sign_rule: list[str]
    positive_end: list[str]

    def pc(self, i: int) -> np.ndarray:
        return self.scores[:, i]

    def to_dict(self) -> dict[str, Any]:
        return {"emotions": self.emotions, "scores": self.scores.tolist(), "explained": self.explained.tolist(),
                "sign_rule": self.sign_rule, "positive_end": self.positive_end}


def _orient(scores: np.ndarray, emotions: Sequence[str], i: int, anchors, reference: np.ndarray | None
            ) -> tuple[int, str]:
    idx = {e: j for j, e in enumerate(emotions)}
    if anchors is not None and i in anchors:
        pos, neg, _ = anchors[i]
        p = [idx[w] for w in pos if w in idx]
        q = [idx[w] for w in neg if w in idx]
        if p and q:
            d = scores[p, i].mean() - scores[q, i].mean()
            if d != 0:
                return (1 if d > 0 else -1), f"anchors ({len(p)} vs {len(q)} words)"
    if reference is not None:
        ok = np.isfinite(reference)
        if ok.sum() >= 3 and np.ptp(scores[ok, i]) > 0 and np.ptp(reference[ok]) > 0:
            r = np.corrcoef(scores[ok, i], reference[ok])[0, 1]
            return (1 if r >= 0 else -1), f"human ratings (n={int(ok.sum())})"
    j = int(np.argmax(np.abs(scores[:, i])))
    return (1 if scores[j, i] >= 0 else -1), "largest |score| positive"


def pca(vectors, emotions: Sequence[str], n_components: int = 3,
        anchors: dict[int, tuple[tuple[str, ...], tuple[str, ...], str]] | None = None,
        reference: dict[int, np.ndarray] | None = None, normalize: bool = False) -> PCAResult:
    """PCA of ``vectors [n, width]`` with each PC's sign fixed by the documented convention.

    ``anchors`` defaults to :data:`DEFAULT_ANCHORS`; ``reference`` optionally gives, per PC index,
    human ratings aligned to ``emotions`` (NaN where missing) used only when the anchors are absent.
    """
    from sklearn.decomposition import PCA

    x = unit_rows(vectors) if normalize else _np(vectors)
    n = x.shape[0]
    k = max(1, min(int(n_components), n - 1, x.shape[1])) if n > 1 else 1
    anchors = DEFAULT_ANCHORS if anchors is None else anchors
    if n < 2:
        return PCAResult(list(emotions), np.zeros((n, 1)), np.array([math.nan]), np.zeros((1, x.shape[1])),
                         ["not computable"], [""])
    p = PCA(n_components=k, svd_solver="full").fit(x)
    scores = p.transform(x)
    comps = p.components_.copy()
    rules, ends = [], []
    for i in range(k):
        sign, rule = _orient(scores, emotions, i, anchors, (reference or {}).get(i))
        scores[:, i] *= sign
        comps[i] *= sign
        rules.append(rule)
        ends.append(anchors[i][2] if i in anchors else "")
    return PCAResult(list(emotions), scores, np.asarray(p.explained_variance_ratio_, dtype=np.float64), comps,
                     rules, ends)


def correlate_with_norms(result: PCAResult, norms, pairs: Sequence[tuple[int, str]] = ((0, "valence"), (1, "arousal"),
                                                                                        (2, "arousal")),
                         exact_only: bool = False, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0
                         ) -> list[dict[str, Any]]:
    """Pearson r of PC scores with human ratings (``emolib.study.human_ratings.Norms``), one row per (PC, dimension).

    Rows for PCs that do not exist, or dimensions the source lacks, are skipped.
    """
    rows = []
    for i, dim in pairs:
        if i >= result.scores.shape[1]:
            continue
        if dim == "arousal" and not norms.arousal:
            continue
        y = norms.values(result.emotions, dim, exact_only=exact_only)
        c: Correlation = correlation(result.pc(i), y, n_boot=n_boot, n_perm=n_perm, seed=seed)
        rows.append({"pc": i + 1, "dimension": dim, "source": norms.source, "exact_only": exact_only,
                     **c.as_dict(), "text": str(c), "short": c.short()})
    return rows


def pc_correlations(vectors, emotions: Sequence[str], target: np.ndarray, n_components: int = 10) -> list[float]:
    """Pearson r of each of the first ``n_components`` PCs (sign convention applied) with ``target``.

    Shows *where* a rating lives when it is not on PC1 (no CI: a diagnostic, not a headline).
    """
    p = pca(vectors, emotions, n_components=n_components)
    return [correlation(p.pc(i), target, n_boot=0, n_perm=0).r for i in range(p.scores.shape[1])]


def decodability(vectors, target: np.ndarray, folds: int = 10, seed: int = 0) -> Correlation:
    """Is a rating linearly readable from the vectors at all, even if not on one PC?

    Ridge regression from the unit-normalised vectors to ``target`` (words without a rating
    dropped), ``alpha`` chosen inside each training fold (``RidgeCV``), predictions made
    out-of-fold; returns r(prediction, rating) with a bootstrap CI (no permutation p: refitting
    for every shuffle would cost more than the rest of the stage).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    x, y = unit_rows(vectors), _np(target)
    ok = np.isfinite(y)
    n = int(ok.sum())
    if n < max(5, folds):
        return Correlation(math.nan, math.nan, math.nan, math.nan, n, note="too few rated words to cross-validate")
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), x[ok], y[ok], cv=cv)
    return correlation(pred, y[ok], n_boot=1000, n_perm=0, seed=seed)


def valence_arousal_correlation(norms, words: Sequence[str]) -> Correlation:
    """Correlation of the human valence and arousal ratings themselves (the paper's judge: r = -0.02)."""
    return correlation(norms.values(words, "valence"), norms.values(words, "arousal"), n_boot=0, n_perm=0)


# ---- 2-D maps -----------------------------------------------------------------------------------
def umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def umap_map(vectors, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-D UMAP (cosine metric) of the vectors; ``n_neighbors`` is capped at ``n - 1``."""
    import warnings

    import umap

    x = _np(vectors)
    nn = max(2, min(int(n_neighbors), x.shape[0] - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(n_neighbors=nn, min_dist=min_dist, metric="cosine", random_state=seed,
                         init="random" if x.shape[0] < 10 else "spectral").fit_transform(x)


# ---- depth --------------------------------------------------------------------------------------
def evenly_spaced_layers(available: Sequence[int], n: int = 14, lo: float = 0.1, hi: float = 0.9,
                         n_blocks: int | None = None) -> list[int]:
    """Up to ``n`` layers spread evenly over the ``[lo, hi]`` fraction of the depth.

    ``n_blocks`` is the model's depth (default: ``max(available) + 1``). Targets are rounded to
    the nearest available layer; duplicates are dropped, so fewer layers come back when the
    model is shallow.
    """
    avail = sorted(int(a) for a in available)
    if not avail:
        return []
    depth = int(n_blocks) if n_blocks else avail[-1] + 1
    targets = np.linspace(lo * (depth - 1), hi * (depth - 1), max(1, int(n)))
    picked = []
    for t in targets:
        best = min(avail, key=lambda a: (abs(a - t), a))
        if best not in picked:
            picked.append(best)
    return sorted(picked)


@dataclass
class RSAResult:
    """Similarity of the cosine matrices of several layers: ``matrix[i, j]`` for ``layers[i], layers[j]``."""

    layers: list[int]
    matrix: np.ndarray
    method: str

    def adjacent(self) -> list[float]:
        """Similarity of each layer with the next one in ``layers``."""
        return [float(self.matrix[i, i + 1]) for i in range(len(self.layers) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "matrix": self.matrix.tolist(), "method": self.method}


def rsa_across_layers(vectors, layers: Sequence[int] | None = None, method: str = "cosine") -> RSAResult:
    """Compare the emotion cosine matrices of ``layers`` (an ``EmotionVectors``) pairwise.

    ``method="cosine"`` (the paper's): cosine of the off-diagonal upper triangles;
    ``"pearson"``: their Pearson r (the same after centring the entries).
    """
    if method not in {"cosine", "pearson"}:
        raise ValueError(f"method must be 'cosine' or 'pearson', got {method!r}")
    layers = list(vectors.layers) if layers is None else [int(x) for x in layers]
    tri = np.stack([off_diagonal(cosine_matrix(vectors.at(layer))) for layer in layers])
    if method == "pearson":
        tri = tri - tri.mean(axis=1, keepdims=True)
    m = cosine_matrix(tri) if tri.shape[1] else np.full((len(layers), len(layers)), math.nan)
    return RSAResult(layers, m, method)


# ---- the paper table --------------------------------------------------------------------------
def _fmt_r(row: dict[str, Any] | None) -> str:
    if not row or row.get("r") is None or not math.isfinite(row["r"]):
        return "not computable"
    return f"{row['r']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], n={row['n']}"


def find_row(rows: Sequence[dict[str, Any]], pc: int, dimension: str, source: str, exact_only: bool = False
             ) -> dict[str, Any] | None:
    return next((r for r in rows if r["pc"] == pc and r["dimension"] == dimension and r["source"] == source
                 and r["exact_only"] == exact_only), None)


def metric_rows(p: PCAResult, corr_rows: Sequence[dict[str, Any]], agreement: ClusterAgreement,
                km: KMeansResult, rsa: RSAResult | None, layer: int,
                decode: dict[str, Correlation] | None = None) -> list[dict[str, Any]]:
    """Rows for :func:`emolib.study.runs.write_metrics`: our geometry numbers beside the paper's."""

    def expl(i):
        return float(p.explained[i]) if i < len(p.explained) else None

    rows: list[dict[str, Any]] = [
        {"key": "pc1_explained", "label": f"PC1 explained variance (layer {layer})", "ours": expl(0),
         "paper": PAPER["pc1_explained"], "note": "fraction of the variance of the emotion vectors"},
        {"key": "pc2_explained", "label": "PC2 explained variance", "ours": expl(1),
         "paper": PAPER["pc2_explained"], "note": ""},
        {"key": "pc3_explained", "label": "PC3 explained variance", "ours": expl(2), "paper": None, "note": ""},
    ]
    for key, pc, dim, src, paper in [("pc1_valence_r", 1, "valence", "warriner2013", PAPER["pc1_valence_r"]),
                                     ("pc2_arousal_r", 2, "arousal", "warriner2013", PAPER["pc2_arousal_r"]),
                                     ("pc3_arousal_r", 3, "arousal", "warriner2013", None),
                                     ("pc1_valence_r_vader", 1, "valence", "vader", None)]:
        row = find_row(corr_rows, pc, dim, src)
        rows.append({"key": key, "label": f"PC{pc} vs human {dim} ({src}), Pearson r",
                     "ours": row["r"] if row else None, "paper": paper,
                     "note": _fmt_r(row) + ("; paper: Russell & Mehrabian norms, n=45" if paper is not None else "")})
    for dim, c in (decode or {}).items():
        rows.append({"key": f"{dim}_decodable_r", "label": f"human {dim} decodable from the vectors (10-fold ridge r)",
                     "ours": c.r, "paper": None, "note": str(c)})
    base = agreement.baseline
    rows.append({"key": "cluster_ari", "label": f"k-means (k={km.k}) ARI vs the paper's clusters",
                 "ours": agreement.ari, "paper": None,
                 "note": (f"chance {base.null_mean:.3f} +- {base.null_sd:.3f} (95th pct {base.null_q95:.3f}), "
                          f"p={base.p_perm:.3g}, n={agreement.n}") if base else agreement.note})
    rows.append({"key": "kmeans_stability", "label": f"k-means stability (mean pairwise ARI, {len(km.seeds)} seeds)",
                 "ours": km.stability_ari, "paper": None, "note": ""})
    if rsa is not None and len(rsa.layers) > 1:
        rows.append({"key": "rsa_min_adjacent", "label": "RSA: lowest similarity of adjacent layers' cosine matrices",
                     "ours": float(min(rsa.adjacent())), "paper": "stable from early-middle to late layers",
                     "note": f"layers {rsa.layers}"})
    return rows


# ---- figures ------------------------------------------------------------------------------------
def cluster_colors(names: Sequence[str | None]) -> dict[str, Any]:
    """A fixed colour per cluster name (tab10 in the paper's order), grey for None."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    uniq = list(dict.fromkeys(n for n in names if n is not None))
    return {n: cmap(i % 10) for i, n in enumerate(uniq)}


def plot_cosine_matrix(cos: np.ndarray, emotions: Sequence[str], ordering: Ordering,
                       groups: Sequence[str | None] | None = None, group_order: Sequence[str] | None = None,
                       title: str = "", fontsize: float | None = None):
    """The cosine matrix as a seaborn clustermap: rows and columns in ``ordering``'s tree (drawn on top
    and left), every word labelled and coloured by ``groups`` (e.g. the paper's clusters), with a colour
    strip of the groups beside the rows.

    The figure grows with the number of emotions (about 0.14 in per row), so 171 labels stay legible.
    """
    import pandas as pd
    import seaborn as sns
    from matplotlib.patches import Patch

    n = len(emotions)
    size = max(6.0, 0.14 * n + 3)
    fs = fontsize or (6.5 if n > 60 else 9)
    df = pd.DataFrame(_np(cos), index=list(emotions), columns=list(emotions))
    colors = cluster_colors(list(group_order) if group_order else list(groups)) if groups is not None else {}
    strip = pd.Series([colors.get(g, (0.8, 0.8, 0.8, 1.0)) for g in groups], index=list(emotions)) if groups else None
    kw = {}
    if ordering.linkage is not None:
        kw = {"row_linkage": ordering.linkage, "col_linkage": ordering.linkage}
    else:
        o = ordering.order
        df = df.iloc[o, o]
        strip = strip.iloc[o] if strip is not None else None
        kw = {"row_cluster": False, "col_cluster": False}
    g = sns.clustermap(df, cmap="RdBu_r", vmin=-1, vmax=1, figsize=(size + 1.5, size + 1.0), xticklabels=True,
                       yticklabels=True, row_colors=strip, dendrogram_ratio=0.06, colors_ratio=0.012,
                       cbar_pos=(0.01, 0.9, 0.015, 0.08), cbar_kws={"label": "cosine"}, **kw)
    ax = g.ax_heatmap
    ax.tick_params(length=0, pad=1, labelsize=fs)
    order = g.dendrogram_row.reordered_ind if ordering.linkage is not None else list(range(n))
    names = [df.index[i] for i in order]
    if groups is not None:
        gmap = dict(zip(emotions, groups))
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for t, name in zip(labels, names):
                c = colors.get(gmap.get(name))
                t.set_color(_darker(c) if c is not None else "0.4")
        g.figure.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], loc="upper right",
                        fontsize=max(fs + 2, 8), frameon=False, title="label colour", bbox_to_anchor=(1.0, 1.0))
    if title:
        g.figure.suptitle(title, x=0.12, ha="left", y=1.0, fontsize=max(fs + 6, 12))
    return g.figure


def _darker(color, factor: float = 0.75):
    """A darker shade of an RGB(A) colour, so coloured text stays readable on white."""
    r, g, b = color[:3]
    return (r * factor, g * factor, b * factor)


def plot_cosine_zoom(cos: np.ndarray, names: Sequence[str], title: str = ""):
    """A small annotated cosine matrix (e.g. the working 12), ordered by its own clustering."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    c = _np(cos)
    o = hierarchical_order(c).order
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.6 * n + 2.5, 0.6 * n + 1.5))
    lab = [names[i] for i in o]
    sns.heatmap(c[np.ix_(o, o)], ax=ax, cmap="RdBu_r", vmin=-1, vmax=1, annot=True, fmt=".2f",
                annot_kws={"size": 7}, xticklabels=lab, yticklabels=lab, square=True,
                cbar_kws={"shrink": 0.8, "label": "cosine similarity"})
    ax.tick_params(axis="x", rotation=60)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_map(coords: np.ndarray, emotions: Sequence[str], labels: Sequence, title: str = "",
             xlabel: str = "", ylabel: str = "", legend_title: str = "", highlight: Sequence[str] = (),
             fontsize: float = 6.5):
    """A 2-D scatter of the emotions with every word written, coloured by ``labels``."""
    import matplotlib.pyplot as plt

    xy = _np(coords)
    fig, ax = plt.subplots(figsize=(13, 11))
    colors = cluster_colors(sorted({str(v) for v in labels}))
    for lab, col in colors.items():
        idx = [i for i, v in enumerate(labels) if str(v) == lab]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=18, color=col, label=lab)
    hi = set(highlight)
    for i, e in enumerate(emotions):
        ax.annotate(e, xy[i, :2], fontsize=fontsize + (2.5 if e in hi else 0),
                    fontweight="bold" if e in hi else "normal", xytext=(2, 2), textcoords="offset points")
    # origin lines only where 0 lies inside the data (PCA scores): drawing them for a UMAP
    # embedding, whose coordinates are all positive, stretched the axes to include 0
    if xy.shape[0] and xy[:, 1].min() < 0 < xy[:, 1].max():
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    if xy.shape[0] and xy[:, 0].min() < 0 < xy[:, 0].max():
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, title=legend_title, loc="best", markerscale=1.5)
    fig.tight_layout()
    return fig


def plot_explained(explained: np.ndarray, paper: Sequence[float] = (PAPER["pc1_explained"], PAPER["pc2_explained"])):
    """Bar chart of the explained-variance ratio of the first PCs, with the paper's PC1/PC2."""
    import matplotlib.pyplot as plt

    e = _np(explained)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    k = len(e)
    ax.bar(np.arange(k) - 0.2, e, width=0.4, label="ours")
    ax.bar(np.arange(len(paper)) + 0.2, paper, width=0.4, label="paper (Sonnet 4.5)")
    ax.set_xticks(range(k), [f"PC{i + 1}" for i in range(k)])
    ax.set_ylabel("explained variance ratio")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_norm_scatter(panels: Sequence[dict[str, Any]]):
    """One panel per comparison: ``{x, y, words, xlabel, ylabel, text}`` (PC score vs human rating),
    with seaborn's least-squares line and its 95 % bootstrap band."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    m = len(panels)
    fig, axes = plt.subplots(1, m, figsize=(6.5 * m, 6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        x, y = _np(p["x"]), _np(p["y"])
        ok = np.isfinite(x) & np.isfinite(y)
        sns.regplot(x=x[ok], y=y[ok], ax=ax, scatter_kws={"s": 12}, line_kws={"color": "C3", "lw": 1}, ci=95,
                    n_boot=500, seed=0)
        for xi, yi, w in zip(x[ok], y[ok], [w for w, k in zip(p["words"], ok) if k]):
            ax.annotate(w, (xi, yi), fontsize=6, xytext=(2, 1), textcoords="offset points")
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p.get("text", ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_rsa(rsa: RSAResult, n_blocks: int | None = None, ceiling: dict[int, float] | None = None):
    """Heatmap of the layer-by-layer similarity of the emotion cosine matrices; with ``ceiling``
    (layer -> split-half reliability of that layer's matrix), the diagonal shows it instead of 1."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    n = len(rsa.layers)
    m = np.array(rsa.matrix, dtype=float)
    if ceiling:
        for i, layer in enumerate(rsa.layers):
            if layer in ceiling:
                m[i, i] = ceiling[layer]
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.2))
    finite = m[np.isfinite(m)]
    vmin = float(min(0.0, finite.min())) if finite.size else 0.0
    sns.heatmap(m, ax=ax, cmap="viridis", vmin=vmin, vmax=1, annot=n <= 16, fmt=".2f", annot_kws={"size": 6},
                xticklabels=rsa.layers, yticklabels=rsa.layers, square=True,
                cbar_kws={"shrink": 0.8, "label": f"{rsa.method} similarity of cosine matrices"})
    ax.set(xlabel="block", ylabel="block")
    ax.set_title("RSA across depth" + (f" ({n_blocks} blocks)" if n_blocks else "")
                 + ("; diagonal: split-half reliability" if ceiling else ""))
    fig.tight_layout()
    return fig
