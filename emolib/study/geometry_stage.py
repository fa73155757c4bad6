"""Stage 04: the steps of the geometry notebook, each returning what it shows as ``(figure, data)``.

The maths is in :mod:`emolib.study.geometry` (cosine matrix, clusters, PCA, ratings, RSA) and
:mod:`emolib.study.valence_map` (every layer x PC1-PC5 against human ratings); this module runs them
on a run's vectors and adds the **noise ceilings** (issue 16): for each picture, what the same
analysis gives between two disjoint halves of the stories, so a reader can tell structure from noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolib.emotions import WORKING_12, paper_clusters
from emolib.study import geometry as geo
from emolib.study import reliability as rel
from emolib.study import valence_map as vmap


@dataclass
class Ceilings:
    """Split-half estimates from the stories behind the vectors (None when the stories are not in the run)."""

    x: torch.Tensor | None = None  # [n_stories, layers, width], pooled, as stored
    labels: list[str] = field(default_factory=list)
    pca: Any = None
    threshold: float | None = None

    @property
    def available(self) -> bool:
        return self.x is not None

    def at(self, vectors, layer: int) -> torch.Tensor:
        return rel.denoised_at(self.x, list(vectors.layers).index(layer), self.pca, layer, self.threshold)


def load_ceilings(stage, vectors) -> Ceilings:
    """The pooled stories and the neutral PCA 02 left in the run (or an empty :class:`Ceilings` with the reason)."""
    return load_story_pool(stage.run, vectors, "noise ceilings")


def load_story_pool(run, vectors, what: str) -> Ceilings:
    """The pooled stories behind ``vectors`` and the neutral PCA 02 left in ``run``; if the stories are not
    there, an empty :class:`Ceilings` and one line saying that ``what`` is skipped and why."""
    from emolib.study.extraction import load_pooled_stories
    from emolib.vectors import NeutralPCA

    try:
        stories = load_pooled_stories(run, vectors)
    except FileNotFoundError as err:
        print(f"{what} skipped: {err}")
        return Ceilings()
    path = Path(run) / "neutral_pca.safetensors"
    pca = NeutralPCA.load(path) if path.exists() else None
    den = vectors.meta.get("denoise") or {}
    return Ceilings(stories.x, stories.labels, pca, den.get("threshold"))


def similarity(vectors, layer: int, ceil: Ceilings, reps: int = 10, seed: int = 0):
    """The ordered cosine matrix (a clustermap) and its split-half reliability at ``layer``."""
    emotions = list(vectors.emotions)
    x = vectors.at(layer).double().numpy()
    c = geo.cosine_matrix(x)
    order = geo.hierarchical_order(c)
    paper_of = geo.paper_labels(emotions)
    sh = rel.split_half(ceil.at(vectors, layer), ceil.labels, reps=reps, seed=seed) if ceil.available else None
    note = (f"; split-half r {sh['r']:.2f} ({sh['stories_per_half']} stories per half), full-corpus reliability "
            f"{sh['spearman_brown']:.2f}" if sh else "")
    fig = geo.plot_cosine_matrix(c, emotions, order, groups=paper_of, group_order=list(paper_clusters()),
                                 title=f"Cosine similarity of the {len(emotions)} emotion vectors, block {layer}{note}")
    data = {"layer": layer, "order": order.names(emotions), "emotions": emotions, "cosine": np.round(c, 4),
            "paper_cluster": paper_of, "split_half": sh}
    return c, order, sh, fig, data


def neighbours(c: np.ndarray, emotions: Sequence[str], k: int = 4) -> list[str]:
    """The working-12 words' nearest emotions, one line each."""
    nn = geo.nearest_neighbours(c, emotions, [w for w in WORKING_12 if w in emotions], k=k)
    return [f"{w:>10}: " + ", ".join(f"{e} {v:.2f}" for e, v in lst) for w, lst in nn.items()]


def working12(c: np.ndarray, emotions: Sequence[str], layer: int):
    w12 = [w for w in WORKING_12 if w in emotions]
    if len(w12) < 2:
        return None, None
    idx = [list(emotions).index(w) for w in w12]
    c12 = c[np.ix_(idx, idx)]
    return geo.plot_cosine_zoom(c12, w12, title=f"The working 12, block {layer}"), {"layer": layer, "emotions": w12,
                                                                                   "cosine": c12}


def cluster_ceiling(ceil: Ceilings, vectors, layer: int, k: int, reps: int = 10, seed: int = 0) -> dict[str, float]:
    """ARI between the k-means clusterings of two disjoint halves of the stories: how well our own
    clustering agrees with itself, the most any clustering of these vectors can agree with another."""
    from sklearn.metrics import adjusted_rand_score

    x = ceil.at(vectors, layer)
    labels = np.asarray(ceil.labels)
    ok = ~torch.isnan(x).any(dim=1).numpy()
    x, labels = x[ok], labels[ok]
    emotions = list(vectors.emotions)
    rng = np.random.default_rng(seed)
    aris = []
    for r in range(reps):
        va, vb = rel._half_vectors(x, labels, emotions, rng)
        ka = geo.kmeans_clusters(va.numpy(), k=k, seeds=[seed + r]).labels
        kb = geo.kmeans_clusters(vb.numpy(), k=k, seeds=[seed + r]).labels
        aris.append(adjusted_rand_score(ka, kb))
    return {"ari_mean": float(np.mean(aris)), "ari_sd": float(np.std(aris)), "reps": reps}


def valence_layers(vectors, ratings: dict[str, np.ndarray], ceil: Ceilings, default: int, n_pcs: int = 5,
                   n_perm: int = 1000, n_boot: int = 2000, reps: int = 10, seed: int = 0):
    """PC1-PC``n_pcs`` x every layer against each rating, the best cell of each (CI, family-wise p),
    the split-half ceilings, the figure and the metric rows."""
    rmap = vmap.rating_map(vectors, ratings, n_pcs=n_pcs)
    best = {k: vmap.best_alignment(rmap, ratings, k, n_perm=n_perm, n_boot=n_boot, seed=seed) for k in ratings}
    ceilings = (vmap.ceilings(ceil.x, ceil.labels, vectors, rmap, ceil.pca, ceil.threshold, reps=reps, seed=seed)
                if ceil.available else None)
    fig, data = vmap.map_figure(rmap, best, ceilings, default)
    return rmap, best, ceilings, fig, data, vmap.rows(best, rmap, ceilings, default)


def where_valence_lives(best: dict[str, dict[str, Any]], rmap: dict[str, Any], default: int) -> str:
    """One paragraph for the paper comparison, generated from the numbers."""
    parts = []
    di = rmap["layers"].index(default)
    for name, b in best.items():
        pc1 = rmap["signed_r"][name][di][0]
        parts.append(f"Human {name} aligns best with PC{b['pc']} at block {b['layer']} (|r| = {b['abs_r']:.2f}, "
                     f"95% CI {b['ci95'][0]:.2f}-{b['ci95'][1]:.2f}, family-wise p = {b['p_familywise']:.3g} over "
                     f"{b['n_cells']} layer x PC cells; n = {b['n']}); at the default block {default} PC1's r is "
                     f"{pc1:+.2f}.")
    parts.append("The paper (Claude Sonnet 4.5) finds valence on PC1 (r = 0.81) and arousal on PC2 (r = 0.66).")
    return " ".join(parts)


def rsa_with_ceiling(vectors, layers: Sequence[int], ceil: Ceilings, n_blocks: int, reps: int = 6, seed: int = 0):
    """The RSA across depth, its diagonal replaced by each layer's split-half reliability."""
    rsa = geo.rsa_across_layers(vectors, layers)
    diag = {}
    if ceil.available:
        for layer in rsa.layers:
            sh = rel.split_half(ceil.at(vectors, layer), ceil.labels, reps=reps, seed=seed)
            diag[layer] = sh["spearman_brown"]
    fig = geo.plot_rsa(rsa, n_blocks, ceiling=diag or None)
    return rsa, diag, fig, {**rsa.to_dict(), "split_half_reliability": diag}
