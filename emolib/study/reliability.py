"""How much of what a story corpus gives is signal, and how much is noise (issue 16).

Every function works on pooled story means at one layer (``x [n_stories, width]``) with their
emotion labels, so the caller decides the layer and the denoising (projecting the neutral basis
out of the story means first is the same as projecting it out of the vectors: both are linear).

* :func:`grid_folds`: folds that hold out topics **and** voices at once. Topics are dealt into
  ``n_topic_groups`` groups and voices into ``n_voice_groups``; fold (i, j) tests the stories whose
  topic is in group i and voice in group j, with vectors built only from stories whose topic is
  in no group i and voice in no group j. Every story is tested once; nothing about its topic or
  its narrator was seen in training.
* :func:`heldout`: nearest-vector top-1 / top-5 over such folds (and the rate at which the top
  guess falls in the right cluster of the paper).
* :func:`learning_curve`: the same, with the training stories of each emotion cut to ``k``.
* :func:`split_half`: split each emotion's stories in two random halves, build vectors from each,
  and correlate the two emotion-by-emotion cosine matrices (repeated; mean and spread), plus the
  Spearman-Brown estimate for the full set, ``2r / (1 + r)``, and the cosine between the two halves'
  vectors of each emotion.
* :func:`cross_voice`: vectors from every voice but one read the stories of that voice; and
  vectors from one voice read each other voice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emolib.study.geometry import cosine_matrix, off_diagonal
from emolib.study.layer_sweep import grid_folds, nearest_vector_hits  # noqa: F401 - grid_folds is part of this API
from emolib.vectors import emotion_means, grand_mean_center


@dataclass
class Heldout:
    """Held-out accuracy of nearest-vector classification over folds."""

    top1: float
    top5: float
    same_cluster: float  # top guess in the true emotion's paper cluster
    n_test: int
    n_emotions: int
    chance_top1: float
    chance_top5: float
    per_emotion_top1: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _scores(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    means, names, _ = emotion_means(train_x, train_y)
    vecs, grand = grand_mean_center(means)
    vecs = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a = test_x.float() - grand
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a @ vecs.T, names


def heldout(x: torch.Tensor, labels: Sequence[str], folds: Sequence[tuple[np.ndarray, np.ndarray]],
            cluster_of: dict[str, str] | None = None) -> Heldout:
    """Nearest-vector top-1/top-5 of every test story over ``folds`` (vectors from each fold's training part)."""
    x = torch.as_tensor(x).float()
    labels = list(labels)
    hits1, hits5, same, per = 0, 0, 0, defaultdict(list)
    n = 0
    for train, test in folds:
        scores, names = _scores(x[train], [labels[i] for i in train], x[test])
        order = scores.argsort(dim=-1, descending=True)
        for row, i in enumerate(test):
            ranked = [names[k] for k in order[row, :5].tolist()]
            ok1 = ranked[0] == labels[i]
            hits1 += ok1
            hits5 += labels[i] in ranked
            per[labels[i]].append(ok1)
            if cluster_of is not None:
                same += cluster_of.get(ranked[0]) == cluster_of.get(labels[i])
            n += 1
    e = len(set(labels))
    return Heldout(top1=hits1 / max(n, 1), top5=hits5 / max(n, 1), same_cluster=same / max(n, 1) if cluster_of else
                   float("nan"), n_test=n, n_emotions=e, chance_top1=1 / e, chance_top5=min(5, e) / e,
                   per_emotion_top1={k: float(np.mean(v)) for k, v in sorted(per.items())})


def learning_curve(x: torch.Tensor, labels: Sequence[str], folds: Sequence[tuple[np.ndarray, np.ndarray]],
                   sizes: Sequence[int] = (1, 2, 4, 8, 12, 16), reps: int = 3, seed: int = 0) -> dict[str, list]:
    """Held-out top-1/top-5 when each emotion keeps only ``k`` training stories (drawn ``reps`` times per fold).

    A size larger than an emotion's training stories in a fold uses all of them; the curve stops
    at the largest size every emotion reaches in every fold (``max_full``).
    """
    x = torch.as_tensor(x).float()
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = {"sizes": [], "top1": [], "top5": [], "top1_sd": []}
    max_full = min(int(np.min(np.unique(labels[train], return_counts=True)[1])) for train, _ in folds)
    for k in sizes:
        if k > max_full:
            break
        accs1, accs5 = [], []
        for _ in range(reps):
            h1 = h5 = n = 0
            for train, test in folds:
                keep = []
                for e in np.unique(labels[train]):
                    idx = train[labels[train] == e]
                    keep.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
                keep = np.asarray(keep)
                hits = nearest_vector_hits(x[keep], labels[keep].tolist(), x[test], labels[test].tolist())
                h1 += int(hits[1].sum())
                h5 += int(hits[5].sum())
                n += len(test)
            accs1.append(h1 / n)
            accs5.append(h5 / n)
        out["sizes"].append(int(k))
        out["top1"].append(float(np.mean(accs1)))
        out["top5"].append(float(np.mean(accs5)))
        out["top1_sd"].append(float(np.std(accs1)))
    out["max_full"] = max_full
    return out


def half_indices(labels: np.ndarray, emotions: Sequence[str], rng: np.random.Generator) -> tuple[list, list]:
    """Each emotion's stories split at random into two equal halves (an odd story out is left out of
    both): the row indices of half a and of half b."""
    a_idx, b_idx = [], []
    for e in emotions:
        perm = rng.permutation(np.nonzero(labels == e)[0])
        h = len(perm) // 2
        a_idx.extend(perm[:h])
        b_idx.extend(perm[h:2 * h])
    return a_idx, b_idx


def vectors_of(x: torch.Tensor, labels: np.ndarray, emotions: Sequence[str], rows) -> torch.Tensor:
    """Raw emotion vectors ``[E, width]`` (means minus the mean over emotions) from the stories ``rows``."""
    return grand_mean_center(emotion_means(x[rows], labels[rows].tolist(), emotions)[0])[0]


def _half_vectors(x: torch.Tensor, labels: np.ndarray, emotions: Sequence[str], rng: np.random.Generator):
    a_idx, b_idx = half_indices(labels, emotions, rng)
    return vectors_of(x, labels, emotions, a_idx), vectors_of(x, labels, emotions, b_idx)


def split_half(x: torch.Tensor, labels: Sequence[str], reps: int = 20, seed: int = 0) -> dict[str, Any]:
    """Split-half reliability of the emotion-by-emotion cosine matrix and of each vector (see the module doc).

    Returns ``r`` (mean over ``reps`` splits of the correlation between the two halves' matrices,
    off-diagonal entries), ``r_sd``, ``spearman_brown`` (the full set's estimate, ``2r / (1 + r)``),
    ``stories_per_half`` and ``vector_cos`` (per emotion, mean cosine between its two half vectors).
    """
    x = torch.as_tensor(x).float()
    labels = np.asarray(labels)
    emotions = sorted(set(labels.tolist()))
    counts = {e: int((labels == e).sum()) for e in emotions}
    if min(counts.values()) < 2:
        raise ValueError("Every emotion needs at least 2 stories for a split-half estimate.")
    rng = np.random.default_rng(seed)
    rs, vcos = [], []
    for _ in range(reps):
        va, vb = _half_vectors(x, labels, emotions, rng)
        rs.append(float(np.corrcoef(off_diagonal(cosine_matrix(va)), off_diagonal(cosine_matrix(vb)))[0, 1]))
        vcos.append(torch.nn.functional.cosine_similarity(va, vb, dim=-1).numpy())
    r = float(np.mean(rs))
    vc = np.mean(vcos, axis=0)
    return {"r": r, "r_sd": float(np.std(rs)), "spearman_brown": 2 * r / (1 + r) if r > -1 else float("nan"),
            "reps": reps, "stories_per_half": min(counts.values()) // 2, "n_emotions": len(emotions),
            "vector_cos": dict(zip(emotions, [float(v) for v in vc])), "vector_cos_mean": float(vc.mean())}


def split_half_scores(x: torch.Tensor, labels: Sequence[str], score, reps: int = 20, seed: int = 0) -> dict[str, Any]:
    """Split-half reliability of any per-emotion score computed from a set of vectors.

    ``score(vectors [E, width], emotions) -> array [E]`` (e.g. the emotions' PC1 coordinates). The
    correlation between the two halves' scores (mean over splits) and its Spearman-Brown estimate
    for the full set; the square root of the latter is the *noise ceiling* of any correlation of the
    score with an external measure (a correlation cannot exceed the square root of its reliability).
    """
    x = torch.as_tensor(x).float()
    labels = np.asarray(labels)
    emotions = sorted(set(labels.tolist()))
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(reps):
        va, vb = _half_vectors(x, labels, emotions, rng)
        sa, sb = np.asarray(score(va, emotions), float), np.asarray(score(vb, emotions), float)
        rs.append(abs(float(np.corrcoef(sa, sb)[0, 1])))
    r = float(np.mean(rs))
    sb_r = 2 * r / (1 + r)
    return {"r": r, "spearman_brown": sb_r, "ceiling": float(np.sqrt(max(sb_r, 0.0))), "reps": reps}


def cross_voice(x: torch.Tensor, labels: Sequence[str], voices: Sequence[str]) -> dict[str, Any]:
    """Vectors built without one voice read that voice's stories (leave-one-voice-out top-1), and a
    voice-by-voice matrix: vectors from one voice's stories read another voice's (top-1)."""
    x = torch.as_tensor(x).float()
    labels = np.asarray(labels)
    voices = np.asarray(voices)
    names = sorted(set(voices.tolist()))
    loo = {}
    for v in names:
        tr, te = np.nonzero(voices != v)[0], np.nonzero(voices == v)[0]
        hits = nearest_vector_hits(x[tr], labels[tr].tolist(), x[te], labels[te].tolist())
        loo[v] = float(hits[1].float().mean())
    matrix = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        tr = np.nonzero(voices == a)[0]
        for j, b in enumerate(names):
            if a == b:
                continue
            te = np.nonzero(voices == b)[0]
            hits = nearest_vector_hits(x[tr], labels[tr].tolist(), x[te], labels[te].tolist())
            matrix[i, j] = float(hits[1].float().mean())
    return {"voices": names, "leave_one_out_top1": loo, "train_on_row_test_on_column_top1": matrix.tolist(),
            "chance_top1": 1 / len(set(labels.tolist()))}


# ---- the corpus report of notebook 02 -------------------------------------------------------------


def denoised_at(x: torch.Tensor, layer_pos: int, pca=None, layer: int | None = None, threshold: float | None = None):
    """Story means at one layer with the neutral components projected out (``pca=None``: raw)."""
    from emolib.vectors import project_out

    xl = torch.as_tensor(x)[:, layer_pos].float()
    return project_out(xl, pca.basis(layer, threshold)) if pca is not None else xl


def corpus_report(x: torch.Tensor, labels: Sequence[str], topics: Sequence, voices: Sequence[str] | None,
                  cluster_of: dict[str, str] | None = None, n_topic_groups: int = 5, n_voice_groups: int = 3,
                  sizes: Sequence[int] = (1, 2, 4, 8, 12, 16), reps: int = 3, half_reps: int = 20,
                  seed: int = 0) -> dict[str, Any]:
    """Everything 02 reports about the corpus at one layer: held-out accuracy (topic- and voice-disjoint
    when voices are known, else topic-disjoint), the learning curve, split-half reliability and, with
    voices, cross-voice transfer. ``x [n, width]`` (denoised or not, as the caller chose)."""
    ok = ~torch.isnan(torch.as_tensor(x)).any(dim=1)
    keep = np.flatnonzero(ok.numpy())
    x = torch.as_tensor(x)[keep].float()
    labels = [labels[i] for i in keep]
    topics = [topics[i] for i in keep]
    if voices is not None:
        voices = [voices[i] for i in keep]
        folds = grid_folds(topics, voices, n_topic_groups, n_voice_groups, seed)
        scheme = f"folds disjoint in topic and voice ({n_topic_groups} topic x {n_voice_groups} voice groups)"
    else:
        folds = grid_folds(topics, ["-"] * len(topics), n_topic_groups, 1, seed)
        scheme = f"topic-disjoint folds ({n_topic_groups} topic groups)"
    out = {"scheme": scheme, "heldout": heldout(x, labels, folds, cluster_of).to_dict(),
           "learning_curve": learning_curve(x, labels, folds, sizes, reps, seed),
           "split_half": split_half(x, labels, half_reps, seed)}
    if voices is not None and len(set(voices)) > 1:
        out["cross_voice"] = cross_voice(x, labels, voices)
    return out


def learning_curve_figure(report: dict[str, Any], layer: int):
    import matplotlib.pyplot as plt

    lc, h = report["learning_curve"], report["heldout"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.errorbar(lc["sizes"], lc["top1"], yerr=lc["top1_sd"], fmt="o-", ms=4, capsize=2, label="top-1")
    ax.plot(lc["sizes"], lc["top5"], "s--", ms=4, label="top-5")
    ax.axhline(h["chance_top1"], color="grey", ls=":", lw=1, label="chance top-1")
    ax.set(xscale="log", xlabel="training stories per emotion (log scale)", ylabel="held-out accuracy", ylim=(0, 1),
           title=f"Learning curve, block {layer} ({h['n_emotions']}-way)")
    ax.set_xticks(lc["sizes"], [str(s) for s in lc["sizes"]])
    ax.legend(fontsize=8)
    return fig, {"layer": layer, **lc, "scheme": report["scheme"]}


def reliability_figure(report: dict[str, Any], layer: int, by_layer: dict[int, dict[str, float]] | None = None):
    """Split-half reliability: the per-vector cosines between halves, and (if given) r across layers."""
    import matplotlib.pyplot as plt

    sh = report["split_half"]
    n = 2 if by_layer else 1
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.5), squeeze=False)
    ax = axes[0, 0]
    ax.hist(list(sh["vector_cos"].values()), bins=25, color="tab:blue")
    ax.axvline(sh["vector_cos_mean"], color="k", lw=1)
    ax.set(xlabel="cosine between the two halves' vectors", ylabel="emotions",
           title=f"Each vector from two disjoint halves (block {layer})")
    if by_layer:
        ax = axes[0, 1]
        ls = sorted(by_layer)
        ax.plot(ls, [by_layer[k]["r"] for k in ls], "o-", ms=3, label=f"split-half r ({sh['stories_per_half']} per half)")
        ax.plot(ls, [by_layer[k]["spearman_brown"] for k in ls], "s--", ms=3, label="Spearman-Brown, full set")
        ax.axvline(layer, color="k", lw=0.8)
        ax.set(xlabel="block", ylabel="r of the two cosine matrices", ylim=(0, 1), title="Reliability of the geometry")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, {"layer": layer, "split_half": sh, "by_layer": by_layer}


def cross_voice_figure(report: dict[str, Any], layer: int):
    import matplotlib.pyplot as plt
    import seaborn as sns

    cv = report["cross_voice"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    names = cv["voices"]
    loo = [cv["leave_one_out_top1"][v] for v in names]
    axes[0].barh(names, loo, color="tab:green")
    axes[0].axvline(cv["chance_top1"], color="grey", ls=":", lw=1)
    axes[0].set(xlabel="top-1", title="Vectors without a voice read that voice")
    sns.heatmap(np.asarray(cv["train_on_row_test_on_column_top1"], float), annot=True, fmt=".2f", cmap="viridis",
                xticklabels=names, yticklabels=names, ax=axes[1], cbar_kws={"label": "top-1"}, annot_kws={"size": 7})
    axes[1].set(xlabel="stories of voice", ylabel="vectors from voice", title="One voice's vectors read another's")
    fig.suptitle(f"Cross-voice transfer, block {layer}", fontsize=10)
    fig.tight_layout()
    return fig, {"layer": layer, **cv}


def report_rows(report: dict[str, Any], layer: int) -> list[dict[str, Any]]:
    h, sh = report["heldout"], report["split_half"]
    lc = report["learning_curve"]
    rows = [
        {"key": "heldout_top1_strict", "label": f"held-out top-1, {h['n_emotions']}-way ({report['scheme']})",
         "ours": h["top1"], "paper": None, "note": f"block {layer}; chance {h['chance_top1']:.3f}; v1 corpus: 0.20"},
        {"key": "heldout_top5_strict", "label": f"held-out top-5, {h['n_emotions']}-way, same folds", "ours": h["top5"],
         "paper": None, "note": f"chance {h['chance_top5']:.3f}; v1 corpus: 0.45"},
        {"key": "heldout_same_cluster", "label": "held-out top guess in the right paper cluster",
         "ours": h["same_cluster"], "paper": None, "note": "10 clusters of unequal size (paper Table 12)"},
        {"key": "split_half_r", "label": "split-half r of the cosine matrix", "ours": sh["r"], "paper": None,
         "note": f"{sh['stories_per_half']} stories per half, {sh['reps']} splits (sd {sh['r_sd']:.3f}); v1: 0.44"},
        {"key": "split_half_sb", "label": "Spearman-Brown reliability of the full corpus's cosine matrix",
         "ours": sh["spearman_brown"], "paper": None, "note": "2r / (1 + r)"},
        {"key": "split_half_vector_cos", "label": "cosine between one emotion's two half-vectors, mean",
         "ours": sh["vector_cos_mean"], "paper": None, "note": "v1 (3 vs 3 stories): 0.37"},
    ]
    if lc["sizes"]:
        rows.append({"key": "learning_curve_slope", "label": "top-1 gain from the last doubling of stories per emotion",
                     "ours": lc["top1"][-1] - lc["top1"][-2] if len(lc["top1"]) > 1 else None, "paper": None,
                     "note": f"{lc['sizes'][-2] if len(lc['sizes']) > 1 else '-'} -> {lc['sizes'][-1]} stories"})
    if "cross_voice" in report:
        loo = report["cross_voice"]["leave_one_out_top1"]
        rows.append({"key": "cross_voice_loo_min", "label": "leave-one-voice-out top-1, worst voice",
                     "ours": min(loo.values()), "paper": None,
                     "note": f"{min(loo, key=loo.get)}; best {max(loo.values()):.3f} ({max(loo, key=loo.get)})"})
    return rows
