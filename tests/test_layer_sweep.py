"""Layer sweep on synthetic stories with a planted answer: informative layers score, noise layers do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.study.layer_sweep import (
    LayerSweep,
    choose_layer,
    compare_corpora,
    layer_sweep,
    nearest_vector_hits,
    topic_folds,
)
from emolib.vectors import fit_neutral_pca

N_EMO, N_TOPIC, WIDTH = 8, 12, 24


def synthetic(signal_by_layer=(0.0, 1.0, 2.0, 2.0, 0.3), seed=0, emotions=None, per_emotion=6, nuisance=None):
    """Stories with a topic offset, an emotion direction scaled per layer, and noise."""
    g = torch.Generator().manual_seed(seed)
    emotions = emotions or [f"e{i}" for i in range(N_EMO)]
    emo_dir = {e: torch.randn(WIDTH, generator=torch.Generator().manual_seed(1000 + int(e[1:]))) for e in emotions}
    topic_dir = torch.randn(N_TOPIC, WIDTH, generator=g)
    rows, labels, topics = [], [], []
    for e in emotions:
        for j in range(per_emotion):
            t = (j * 5 + int(e[1:])) % N_TOPIC
            layers = []
            for s in signal_by_layer:
                x = 3.0 + topic_dir[t] + s * emo_dir[e] + 0.5 * torch.randn(WIDTH, generator=g)
                if nuisance is not None:
                    x = x + 6.0 * torch.randn(1, generator=g) * nuisance
                layers.append(x)
            rows.append(torch.stack(layers))
            labels.append(e)
            topics.append(t)
    return torch.stack(rows), labels, topics


def test_topic_folds_are_topic_disjoint():
    topics = [i % 7 for i in range(40)] + [None, None]
    folds = topic_folds(topics, n_folds=3, seed=1)
    assert set(folds) == {0, 1, 2}
    for t in range(7):
        assert len({folds[i] for i in range(40) if topics[i] == t}) == 1
    with pytest.raises(ValueError, match="cannot fill"):
        topic_folds([1, 1, 2], n_folds=3)


def test_sweep_finds_planted_layers_and_chance_elsewhere():
    x, labels, topics = synthetic()
    sweep = layer_sweep(x, labels, topics, layers=[0, 1, 2, 3, 4], n_folds=4, probe_layers=[0, 2])
    top1 = sweep.top1["raw"]
    assert sweep.chance_top1 == pytest.approx(1 / N_EMO)
    assert top1[0] < 0.35  # no signal: near chance (0.125)
    assert top1[2] > 0.9 and top1[3] > 0.9
    assert sweep.top5["raw"][2] >= top1[2]
    assert sweep.top1["probe"][2] > 0.8
    assert np.isnan(sweep.top1["probe"][1]) and np.isnan(sweep.top1["denoised"][1])  # not run
    assert sweep.n_test == len(labels)
    with pytest.raises(ValueError, match="one column per entry of layers"):
        layer_sweep(x, labels, topics, layers=[2], n_folds=4)


def test_denoising_helps_when_a_nuisance_dominates():
    nuisance = torch.zeros(WIDTH)
    nuisance[0] = 1.0
    x, labels, topics = synthetic(signal_by_layer=(1.0,), nuisance=nuisance, seed=3)
    g = torch.Generator().manual_seed(9)
    neutral = (0.5 * torch.randn(200, 1, WIDTH, generator=g) + 6.0 * torch.randn(200, 1, 1, generator=g) * nuisance)
    pca = fit_neutral_pca(neutral, layers=[0])
    sweep = layer_sweep(x, labels, topics, layers=[0], pca=pca, n_folds=4, probe_layers=[])
    assert sweep.n_removed == [1]
    assert sweep.top1["denoised"][0] > sweep.top1["raw"][0] + 0.1


def test_choose_layer_prefers_two_thirds_depth_on_the_plateau():
    acc = [0.05, 0.1, 0.6, 0.8, 0.82, 0.8, 0.78, 0.75, 0.2, 0.05]
    sweep = LayerSweep(layers=list(range(10)), emotions=["a"] * 20, n_test=100, n_folds=5,
                       top1={"raw": acc, "denoised": [float("nan")] * 10, "probe": [float("nan")] * 10},
                       top5={"raw": acc, "denoised": acc, "probe": acc}, chance_top1=0.05, chance_top5=0.25)
    # smoothed (3-layer mean): 0.075 0.25 0.5 0.74 0.81 0.8 0.78 0.58 0.33 0.125 -> plateau (>= 0.9 * 0.81): 3..6
    assert choose_layer(sweep, n_blocks=10) == 6  # closest to 2/3 * 10; denoised is NaN so raw is used
    assert choose_layer(sweep, n_blocks=10, depth=0.0) == 3
    assert choose_layer(sweep, n_blocks=10, frac=1.0) == 4  # the best smoothed layer alone


def test_nearest_vector_counts_missing_emotion_as_miss():
    x, labels, _ = synthetic(signal_by_layer=(2.0,))
    train = [i for i, e in enumerate(labels) if e != "e0"]
    test = [i for i, e in enumerate(labels) if e == "e0"]
    hits = nearest_vector_hits(x[train, 0], [labels[i] for i in train], x[test, 0], [labels[i] for i in test])
    assert not hits[1].any() and not hits[5].any()


def test_compare_corpora_handles_emotions_in_one_corpus_only():
    xa, la, _ = synthetic(signal_by_layer=(0.0, 2.0), emotions=["e0", "e1", "e2", "e3", "e4"], seed=1)
    xb, lb, _ = synthetic(signal_by_layer=(0.0, 2.0), emotions=["e2", "e3", "e4", "e5", "e6", "e7"], seed=2)
    xb = xb + 5.0  # another writer: a constant style offset
    cmp = compare_corpora(xa, la, xb, lb, layers=[0, 1], layer=1)
    assert cmp.shared == ["e2", "e3", "e4"]
    assert cmp.only_a == ["e0", "e1"] and cmp.only_b == ["e5", "e6", "e7"]
    assert min(cmp.cosine.values()) > 0.8  # same planted directions
    assert cmp.a_on_b["top1"][1] > 0.9 and cmp.b_on_a["top1"][1] > 0.9
    assert cmp.n_a == 18 and cmp.chance_top1 == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="share 0"):
        compare_corpora(xa[:6], la[:6], xb[-6:], lb[-6:], layers=[0, 1], layer=1)
