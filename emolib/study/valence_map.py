"""Where valence and arousal live in the model: every layer, the first principal components (issue 16).

Corpus v1 showed that valence is not PC1 of this model's emotion vectors at any layer but is PC3 at
blocks 21-26, and a notebook that reports PC1 and PC2 at one block misses it. So 04 asks the question
at every layer and for PC1-PC5:

* :func:`rating_map`: at each layer, PCA of the (grand-mean-centred) emotion vectors, and the
  correlation of each PC's scores with human valence and arousal over the rated emotions. A PC's
  sign is arbitrary, so the map holds ``|r|``; the signed value with the sign fixed by the anchor
  words (pleasant / high-arousal anchors positive) is kept alongside.
* :func:`best_alignment`: the (layer, PC) cell with the largest ``|r|`` for a rating, a bootstrap
  interval over emotions for that cell, and a **family-wise** p-value that pays for having looked
  at every cell: the maximum ``|r|`` over all cells is recomputed with the ratings shuffled across
  emotions, and the observed maximum is compared with that null.
* :func:`ceilings`: the split-half noise ceiling of every cell, from the stories: each emotion's
  stories are split in two halves, both halves' vectors are projected on the same (full-data) PC
  axis, and the two score vectors are correlated; the Spearman-Brown estimate for the full corpus
  is the reliability of that PC's scores, and its square root bounds any correlation of those scores
  with a rating. A cell near its ceiling is as good as this corpus can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emolib.study.geometry import DEFAULT_ANCHORS
from emolib.vectors import emotion_means, grand_mean_center, project_out


def _pca_axes(v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` principal axes (rows) of the centred rows of ``v``, and their explained-variance ratios."""
    x = v - v.mean(0, keepdims=True)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    return vt[:n], (var / var.sum())[:n]


def _orient(scores: np.ndarray, emotions: Sequence[str], i: int) -> float:
    """+1 or -1 so that the PC's positive end holds its anchor words (the notebook's sign convention)."""
    pos, neg, _ = DEFAULT_ANCHORS.get(i, DEFAULT_ANCHORS[1])
    ip = [emotions.index(e) for e in pos if e in emotions]
    ineg = [emotions.index(e) for e in neg if e in emotions]
    if not ip or not ineg:
        return 1.0
    return 1.0 if scores[ip, i].mean() >= scores[ineg, i].mean() else -1.0


def _zscore_cols(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0, keepdims=True)
    sd = a.std(0, keepdims=True)
    return a / np.where(sd > 0, sd, 1.0)


def rating_map(vectors, ratings: dict[str, np.ndarray], n_pcs: int = 5, layers: Sequence[int] | None = None
               ) -> dict[str, Any]:
    """``|r|`` (and signed r) of PC1..PC``n_pcs`` with each rating, at every layer of ``vectors`` (an
    :class:`~emolib.vectors.EmotionVectors`). ``ratings`` maps a name (``"valence"``) to ratings aligned
    with ``vectors.emotions`` (NaN where an emotion has none)."""
    emotions = list(vectors.emotions)
    layers = list(vectors.layers if layers is None else layers)
    n = min(n_pcs, len(emotions) - 1)
    out: dict[str, Any] = {"layers": layers, "pcs": list(range(1, n + 1)), "explained": [], "scores": {},
                           "abs_r": {k: [] for k in ratings}, "signed_r": {k: [] for k in ratings},
                           "n": {k: int(np.isfinite(v).sum()) for k, v in ratings.items()}}
    for layer in layers:
        v = vectors.at(layer).double().numpy()
        axes, expl = _pca_axes(v, n)
        scores = (v - v.mean(0)) @ axes.T
        for i in range(n):
            scores[:, i] *= _orient(scores, emotions, i)
        out["explained"].append(expl.tolist())
        out["scores"][layer] = scores
        for k, y in ratings.items():
            ok = np.isfinite(y)
            r = [float(np.corrcoef(scores[ok, i], y[ok])[0, 1]) for i in range(n)]
            out["signed_r"][k].append(r)
            out["abs_r"][k].append([abs(x) for x in r])
    return out


def best_alignment(rmap: dict[str, Any], ratings: dict[str, np.ndarray], name: str, n_perm: int = 1000,
                   n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The (layer, PC) cell that aligns best with rating ``name``, with a bootstrap CI and family-wise p."""
    y = ratings[name]
    ok = np.isfinite(y)
    layers = rmap["layers"]
    scores = np.stack([rmap["scores"][layer][ok] for layer in layers])  # [L, n, k]
    yz = _zscore_cols(y[ok][:, None])[:, 0]
    zs = np.stack([_zscore_cols(s) for s in scores])  # [L, n, k]
    obs = np.abs(np.einsum("lnk,n->lk", zs, yz) / len(yz))
    li, ki = np.unravel_index(int(np.argmax(obs)), obs.shape)
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for b in range(n_perm):
        null[b] = np.abs(np.einsum("lnk,n->lk", zs, rng.permutation(yz)) / len(yz)).max()
    s = scores[li, :, ki]
    yy = y[ok]
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(yy), len(yy))
        if np.std(s[idx]) > 0 and np.std(yy[idx]) > 0:
            boots.append(abs(np.corrcoef(s[idx], yy[idx])[0, 1]))
    signed = rmap["signed_r"][name][li][ki]
    return {"rating": name, "layer": int(layers[li]), "pc": int(ki + 1), "abs_r": float(obs[li, ki]),
            "signed_r": float(signed), "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "p_familywise": float((1 + (null >= obs[li, ki]).sum()) / (1 + n_perm)),
            "null_max_q95": float(np.percentile(null, 95)), "n_cells": int(obs.size), "n": int(ok.sum())}


def ceilings(x: torch.Tensor, labels: Sequence[str], vectors, rmap: dict[str, Any], pca=None, threshold=None,
             reps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Split-half noise ceiling of every (layer, PC) cell of ``rmap`` (see the module doc).

    ``x [n_stories, layers, width]`` are the pooled stories the vectors were built from (in
    ``vectors.layers`` order), ``pca`` the neutral PCA used to denoise them (None: raw).
    """
    x = torch.as_tensor(x)
    labels = np.asarray(labels)
    ok = ~torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1).numpy()
    x, labels = x[ok], labels[ok]
    emotions = list(vectors.emotions)
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(reps):
        a, b = [], []
        for e in emotions:
            idx = rng.permutation(np.nonzero(labels == e)[0])
            h = len(idx) // 2
            a.extend(idx[:h])
            b.extend(idx[h:2 * h])
        splits.append((np.asarray(a), np.asarray(b)))
    rel, ceil = [], []
    for layer in rmap["layers"]:
        li = list(vectors.layers).index(layer)
        xl = x[:, li].float()
        if pca is not None:
            xl = project_out(xl, pca.basis(layer, threshold))
        v = vectors.at(layer).double().numpy()
        axes, _ = _pca_axes(v, len(rmap["pcs"]))
        rs = []
        for a, b in splits:
            va = grand_mean_center(emotion_means(xl[a], labels[a].tolist(), emotions)[0])[0].double().numpy()
            vb = grand_mean_center(emotion_means(xl[b], labels[b].tolist(), emotions)[0])[0].double().numpy()
            sa, sb = va @ axes.T, vb @ axes.T
            rs.append([float(np.corrcoef(sa[:, k], sb[:, k])[0, 1]) for k in range(axes.shape[0])])
        r = np.clip(np.mean(rs, axis=0), -0.999, 0.999)
        sbr = np.clip(2 * r / (1 + r), 0, 1)
        rel.append(sbr.tolist())
        ceil.append(np.sqrt(sbr).tolist())
    return {"layers": rmap["layers"], "pcs": rmap["pcs"], "reliability": rel, "ceiling": ceil, "reps": reps}


def map_figure(rmap: dict[str, Any], best: dict[str, dict[str, Any]], ceil: dict[str, Any] | None, default: int):
    """Heatmaps of |r| (layers x PCs) for each rating, best cells marked; PC1's r per layer with its ceiling."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = list(rmap["abs_r"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * len(names) + 5.2, 6.2),
                             gridspec_kw={"width_ratios": [1] * len(names) + [1.6]})
    layers = rmap["layers"]
    for ax, name in zip(axes, names):
        m = np.asarray(rmap["abs_r"][name])
        sns.heatmap(m, ax=ax, vmin=0, vmax=1, cmap="magma", annot=True, fmt=".2f", annot_kws={"size": 6},
                    xticklabels=[f"PC{p}" for p in rmap["pcs"]], yticklabels=layers, cbar=ax is axes[0])
        b = best[name]
        ax.add_patch(plt.Rectangle((b["pc"] - 1, layers.index(b["layer"])), 1, 1, fill=False, lw=2, ec="cyan"))
        ax.axhline(layers.index(default), color="w", lw=0.8, ls="--")
        ax.set(title=f"|r| with human {name} (n = {rmap['n'][name]})", ylabel="block" if ax is axes[0] else "")
    ax = axes[-1]
    for name, colour in zip(names, ("tab:red", "tab:blue")):
        ax.plot(layers, [row[0] for row in rmap["signed_r"][name]], "o-", ms=3, color=colour,
                label=f"PC1 vs {name} (signed)")
        best_any = [max(row) for row in rmap["abs_r"][name]]
        ax.plot(layers, best_any, ":", color=colour, label=f"best of PC1-PC{len(rmap['pcs'])} vs {name} (|r|)")
    if ceil is not None:
        ax.fill_between(layers, [c[0] for c in ceil["ceiling"]], 1, color="grey", alpha=0.15,
                        label="above PC1's noise ceiling")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(default, color="k", lw=0.8, ls="--", label=f"default layer ({default})")
    ax.set(xlabel="block", ylabel="r", ylim=(-1, 1), title="PC1 by layer (sign: pleasant / high-arousal anchors +)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    data = {"layers": layers, "pcs": rmap["pcs"], "abs_r": rmap["abs_r"], "signed_r": rmap["signed_r"],
            "explained": rmap["explained"], "n": rmap["n"], "best": best, "ceiling": ceil, "default_layer": default}
    return fig, data


def rows(best: dict[str, dict[str, Any]], rmap: dict[str, Any], ceil: dict[str, Any] | None, default: int
         ) -> list[dict[str, Any]]:
    """Metric rows: where each rating aligns best (with CI and family-wise p), and PC1-PC3 at the default layer."""
    out = []
    di = rmap["layers"].index(default)
    for name, b in best.items():
        cell_ceiling = ceil["ceiling"][rmap["layers"].index(b["layer"])][b["pc"] - 1] if ceil else None
        out.append({"key": f"{name}_best_cell", "label": f"human {name}: best |r| over PC1-PC{len(rmap['pcs'])} x all blocks",
                    "ours": b["abs_r"], "paper": 0.81 if name == "valence" else 0.66,
                    "note": f"PC{b['pc']} at block {b['layer']}; 95% CI [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]; "
                            f"family-wise p = {b['p_familywise']:.3g} over {b['n_cells']} cells; noise ceiling "
                            + (f"{cell_ceiling:.2f}" if cell_ceiling is not None else "n/a") + f"; n = {b['n']}"})
        top3 = rmap["abs_r"][name][di][:3]
        k = int(np.argmax(top3))
        out.append({"key": f"{name}_best_pc123_default", "label": f"human {name}: best |r| over PC1-PC3 at the default layer",
                    "ours": top3[k], "paper": None, "note": f"PC{k + 1} at block {default}; PC1 r = "
                                                            f"{rmap['signed_r'][name][di][0]:+.2f}"})
    return out
