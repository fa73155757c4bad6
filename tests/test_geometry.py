"""Geometry of the emotion space on planted data: ordering, clusters, PCA signs, RSA, tiny inputs."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from emolib.study import geometry as geo
from emolib.vectors import EmotionVectors

matplotlib.use("Agg")

PLEASANT = ["happy", "joyful", "cheerful", "delighted", "calm", "relaxed"]
UNPLEASANT = ["sad", "miserable", "depressed", "terrified", "panicked", "furious"]


def planted_valence(flip: bool = False, width: int = 32, seed: int = 0):
    """Words on a strong axis (valence: +1 pleasant / -1 unpleasant) plus a weaker arousal axis."""
    rng = np.random.default_rng(seed)
    words = PLEASANT + UNPLEASANT
    val = np.array([1.0] * 6 + [-1.0] * 6)
    aro = np.array([0.5, 0.6, 0.4, 0.5, -0.6, -0.7, -0.5, -0.4, -0.5, 0.8, 0.9, 0.7])
    basis = np.linalg.qr(rng.standard_normal((width, 2)))[0].T
    x = 5 * val[:, None] * basis[0] + 2 * aro[:, None] * basis[1] + 0.05 * rng.standard_normal((12, width))
    return words, (-x if flip else x), val, aro


@pytest.mark.parametrize("flip", [False, True])
def test_pca_sign_convention_pc1_pleasant_pc2_high_arousal(flip):
    words, x, val, aro = planted_valence(flip)
    p = geo.pca(x, words)
    assert p.explained[0] > p.explained[1] > p.explained[2]
    assert np.corrcoef(p.pc(0), val)[0, 1] > 0.99   # PC1 positive = pleasant, whatever the input sign
    assert np.corrcoef(p.pc(1), aro)[0, 1] > 0.95   # PC2 positive = high arousal
    assert p.sign_rule[0].startswith("anchors")
    # components carry the same sign as the scores
    centred = x - x.mean(0)
    assert np.allclose(centred @ p.components[0], p.pc(0), atol=1e-8)


def test_pca_sign_falls_back_to_ratings_then_to_largest_score():
    words, x, val, _ = planted_valence()
    neutral_names = [f"w{i}" for i in range(12)]  # no anchor word present
    p = geo.pca(x, neutral_names, reference={0: val})
    assert p.sign_rule[0].startswith("human ratings") and np.corrcoef(p.pc(0), val)[0, 1] > 0.99
    q = geo.pca(-x, neutral_names, reference={0: val})
    assert np.allclose(p.pc(0), q.pc(0))
    r = geo.pca(x, neutral_names)
    j = int(np.argmax(np.abs(r.pc(0))))
    assert r.sign_rule[0] == "largest |score| positive" and r.pc(0)[j] > 0


def test_hierarchical_order_keeps_planted_groups_together():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 20)) * 3
    x = np.concatenate([centers[g] + 0.1 * rng.standard_normal((4, 20)) for g in (0, 1, 2)])
    perm = rng.permutation(12)
    x, groups = x[perm], np.repeat([0, 1, 2], 4)[perm]
    c = geo.cosine_matrix(x)
    assert np.allclose(np.diag(c), 1) and np.allclose(c, c.T)
    o = geo.hierarchical_order(c).order
    assert sorted(o) == list(range(12))
    seq = groups[o]
    assert sum(seq[i] != seq[i + 1] for i in range(11)) == 2  # three contiguous blocks


def test_kmeans_stability_and_agreement_with_reference_clusters():
    rng = np.random.default_rng(1)
    clusters = {"A": [f"a{i}" for i in range(8)], "B": [f"b{i}" for i in range(8)], "C": [f"c{i}" for i in range(8)]}
    words = [w for m in clusters.values() for w in m]
    centers = rng.standard_normal((3, 16))
    x = np.repeat(centers, 8, axis=0) + 0.05 * rng.standard_normal((24, 16))
    km = geo.kmeans_clusters(x, k=3, seeds=range(4))
    assert km.k == 3 and km.stability_ari == pytest.approx(1.0)
    agree = geo.compare_clusters(words, km.labels, clusters, n_perm=200)
    assert agree.ari == pytest.approx(1.0) and agree.n == 24
    assert abs(agree.baseline.null_mean) < 0.05 and agree.baseline.p_perm < 0.01
    names = geo.name_clusters(words, km.labels, clusters)
    assert sorted(n["paper_majority"] for n in names) == ["A", "B", "C"]
    # labels unrelated to the reference: ARI near chance, large p
    shuffled = list(np.random.default_rng(2).permutation(km.labels))
    bad = geo.compare_clusters(words, shuffled, clusters, n_perm=200)
    assert bad.ari < 0.2 and bad.baseline.p_perm > 0.01


def test_evenly_spaced_layers():
    got = geo.evenly_spaced_layers(range(30), n=14, lo=0.1, hi=0.9)
    assert len(got) == 14 and got[0] == 3 and got[-1] == 26 and got == sorted(got)
    assert geo.evenly_spaced_layers(range(4), n=14) == [0, 1, 2, 3]  # shallow model: fewer, no repeats
    assert geo.evenly_spaced_layers([2, 10, 18], n=14, lo=0, hi=1, n_blocks=30) == [2, 10, 18]


def test_rsa_identical_layers_are_one_and_unrelated_layers_are_low():
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.standard_normal((40, 24)), dtype=torch.float32)
    other = torch.tensor(rng.standard_normal((40, 24)), dtype=torch.float32)
    vec = torch.stack([base, 3 * base, other])  # scaling a layer leaves its cosine matrix unchanged
    ev = EmotionVectors(vec, [f"e{i}" for i in range(40)], [0, 1, 2], torch.ones(3))
    for method in ("cosine", "pearson"):
        r = geo.rsa_across_layers(ev, method=method)
        assert r.matrix[0, 1] == pytest.approx(1.0, abs=1e-9)
        assert abs(r.matrix[0, 2]) < 0.3
        assert r.adjacent()[0] == pytest.approx(1.0, abs=1e-9)


def test_four_emotions_run_end_to_end_and_small_statistics_are_not_computable():
    words = ["afraid", "alarmed", "alert", "amazed"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16))
    km = geo.kmeans_clusters(x, k=10, seeds=range(3))
    assert km.k == 3 and len(set(km.labels)) == 3
    agree = geo.compare_clusters(words, km.labels, n_perm=50)  # all four are one paper cluster
    assert math.isnan(agree.ari) and agree.note
    p = geo.pca(x, words)
    assert p.scores.shape == (4, 3) and p.explained.sum() == pytest.approx(1.0)

    class FakeNorms:  # two rated words only
        source, arousal = "fake", {"afraid": 6.0, "alarmed": 6.5}

        def values(self, ws, dim, exact_only=False):
            return np.array([{"afraid": 3.0, "alarmed": 3.5}.get(w, np.nan) for w in ws])

    rows = geo.correlate_with_norms(p, FakeNorms(), n_boot=10, n_perm=10)
    assert rows and all(r["n"] == 2 and r["r"] != r["r"] for r in rows)  # NaN: not computable
    rsa = geo.rsa_across_layers(EmotionVectors(torch.tensor(np.stack([x, x]), dtype=torch.float32), words,
                                               [0, 1], torch.ones(2)))
    rows = geo.metric_rows(p, rows, agree, km, rsa, layer=0)
    assert {r["key"] for r in rows} >= {"pc1_explained", "pc1_valence_r", "cluster_ari"}
    assert geo.effective_k(10, 1) == 1 and geo.effective_k(10, 171) == 10


def test_figures_draw_every_label():
    import matplotlib.pyplot as plt

    words, x, _, _ = planted_valence()
    c = geo.cosine_matrix(x)
    o = geo.hierarchical_order(c)
    fig = geo.plot_cosine_matrix(c, words, o, groups=["pos"] * 6 + ["neg"] * 6)
    heat = max(fig.axes, key=lambda a: len(a.get_yticklabels()))  # the clustermap's heatmap axis
    labels = [t.get_text() for t in heat.get_yticklabels()]
    assert labels == o.names(words)
    plt.close(fig)
    for f in (geo.plot_cosine_zoom(c[:5, :5], words[:5]),
              geo.plot_map(x[:, :2], words, [0] * 6 + [1] * 6, highlight=["happy"]),
              geo.plot_explained(np.array([0.5, 0.3, 0.1]))):
        plt.close(f)


def test_decodability_finds_a_planted_rating_off_the_first_pc():
    rng = np.random.default_rng(0)
    n, width = 60, 30
    x = rng.standard_normal((n, width))
    x[:, 0] *= 6  # the largest direction of variation carries nothing
    target = x[:, 5] + 0.1 * rng.standard_normal(n)
    target[:3] = np.nan  # unrated words are dropped
    pcs = geo.pc_correlations(x, [f"w{i}" for i in range(n)], target, n_components=3)
    assert abs(pcs[0]) < 0.4
    c = geo.decodability(x, target, folds=5)
    assert c.n == 57 and c.r > 0.6 and c.ci_low > 0.3
    assert not geo.decodability(x[:4], target[:4]).computable
