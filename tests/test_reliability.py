"""Reliability of a corpus (issue 16), on planted data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.study import reliability as rel
from emolib.study import valence_map as vmap
from emolib.vectors import EmotionVectors


def planted(n_emotions=12, per=20, width=40, noise=1.0, voice_offset=0.0, seed=0):
    """Stories = emotion direction + noise (+ a constant per voice); topics and voices crossed."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_emotions, width)) * 2
    voice_dirs = rng.standard_normal((6, width)) * voice_offset
    x, labels, topics, voices = [], [], [], []
    for e in range(n_emotions):
        for k in range(per):
            v = (e + k) % 6
            x.append(dirs[e] + voice_dirs[v] + noise * rng.standard_normal(width))
            labels.append(f"e{e}")
            topics.append((e * 7 + k) % 30)
            voices.append(f"v{v}")
    return torch.tensor(np.array(x), dtype=torch.float32), labels, topics, voices


def test_grid_folds_hold_out_topics_and_voices_and_test_every_story_once():
    x, labels, topics, voices = planted()
    folds = rel.grid_folds(topics, voices, n_topic_groups=5, n_voice_groups=3, seed=1)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(len(labels)))
    for train, test in folds:
        assert not {topics[i] for i in train} & {topics[i] for i in test}
        assert not {voices[i] for i in train} & {voices[i] for i in test}
    with pytest.raises(ValueError, match="cannot fill"):
        rel.grid_folds([1, 1, 2], ["a", "b", "c"], n_topic_groups=5)


def test_grid_folds_without_voices_hold_out_topics_only_and_corpus_report_runs():
    # Voices unknown (one group): the folds must still train on every other topic group, not on nothing.
    x, labels, topics, _ = planted(noise=2.0)
    folds = rel.grid_folds(topics, ["-"] * len(topics), n_topic_groups=5, n_voice_groups=1, seed=0)
    assert len(folds) == 5
    for train, test in folds:
        assert len(train) + len(test) == len(labels)
        assert not {topics[i] for i in train} & {topics[i] for i in test}
    rep = rel.corpus_report(x, labels, topics, None, reps=1, half_reps=2, sizes=(1, 2))
    assert rep["scheme"].startswith("topic-disjoint") and rep["heldout"]["top1"] > 0.5


def test_heldout_and_learning_curve_rise_with_signal():
    x, labels, topics, voices = planted(noise=3.0)
    folds = rel.grid_folds(topics, voices, 5, 3)
    h = rel.heldout(x, labels, folds)
    assert h.top1 > 3 * h.chance_top1 and h.top5 >= h.top1
    noise, _, _, _ = planted(noise=3.0, seed=5)
    shuffled = list(np.random.default_rng(0).permutation(labels))
    assert rel.heldout(noise, shuffled, folds).top1 < 2 * h.chance_top1  # labels unrelated to the data: chance
    lc = rel.learning_curve(x, labels, folds, sizes=(1, 2, 4, 8), reps=2)
    assert lc["sizes"] == [1, 2, 4, 8] and lc["top1"][-1] > lc["top1"][0]


def test_split_half_reliability_tracks_noise_and_spearman_brown():
    clean = rel.split_half(*planted(noise=0.5)[:2], reps=5)
    noisy = rel.split_half(*planted(noise=8.0)[:2], reps=5)
    assert clean["r"] > 0.9 > noisy["r"]
    assert noisy["spearman_brown"] == pytest.approx(2 * noisy["r"] / (1 + noisy["r"]))
    assert clean["vector_cos_mean"] > noisy["vector_cos_mean"]
    assert clean["stories_per_half"] == 10


def test_cross_voice_sees_a_voice_offset():
    x, labels, topics, voices = planted(noise=1.0, voice_offset=0.0)
    cv = rel.cross_voice(x, labels, voices)
    assert set(cv["voices"]) == {f"v{i}" for i in range(6)}
    assert min(cv["leave_one_out_top1"].values()) > 0.5


def test_valence_map_finds_a_planted_rating_on_pc3_of_one_layer():
    rng = np.random.default_rng(0)
    n_e, width = 40, 30
    emotions = [f"w{i}" for i in range(n_e)]
    val = rng.standard_normal(n_e)
    layers = []
    for layer in range(4):
        v = rng.standard_normal((n_e, width)) * 0.3
        v[:, 0] += rng.standard_normal(n_e) * 6  # PC1 and PC2: large and unrelated
        v[:, 1] += rng.standard_normal(n_e) * 4
        if layer == 2:
            v[:, 2] += val * 2.5  # PC3 at block 2 carries the rating
        layers.append(v - v.mean(0))
    vec = EmotionVectors(vectors=torch.tensor(np.stack(layers), dtype=torch.float32), emotions=emotions,
                         layers=[0, 1, 2, 3], norms=torch.ones(4))
    ratings = {"valence": val.copy()}
    ratings["valence"][:3] = np.nan  # unrated words are left out
    rmap = vmap.rating_map(vec, ratings, n_pcs=4)
    best = vmap.best_alignment(rmap, ratings, "valence", n_perm=200, n_boot=200)
    assert (best["layer"], best["pc"]) == (2, 3) and best["abs_r"] > 0.8 and best["n"] == 37
    assert best["p_familywise"] < 0.01 and best["ci95"][0] < best["abs_r"] < best["ci95"][1] + 1e-9
    assert max(rmap["abs_r"]["valence"][0]) < 0.6
    # calibrated: ratings unrelated to the vectors reach family-wise p < 0.05 about 5 % of the time, not more
    hits = 0
    for k in range(20):
        noise = {"valence": np.random.default_rng(100 + k).standard_normal(n_e)}
        hits += vmap.best_alignment(vmap.rating_map(vec, noise, n_pcs=4), noise, "valence", n_perm=100,
                                    n_boot=10, seed=k)["p_familywise"] < 0.05
    assert hits <= 3


def test_valence_ceilings_are_high_for_clean_stories_and_low_for_noise():
    x, labels, _, _ = planted(n_emotions=16, per=20, width=30, noise=0.3)
    emotions = sorted(set(labels))
    from emolib.vectors import emotion_means, grand_mean_center

    v, _ = grand_mean_center(emotion_means(x, labels, emotions)[0])
    vec = EmotionVectors(vectors=v.unsqueeze(0), emotions=emotions, layers=[0], norms=torch.ones(1))
    rmap = vmap.rating_map(vec, {"valence": np.arange(16.0)}, n_pcs=3)
    c = vmap.ceilings(x.unsqueeze(1), labels, vec, rmap, reps=4)
    assert min(c["ceiling"][0]) > 0.9
    xn, ln, _, _ = planted(n_emotions=16, per=20, width=30, noise=30.0)
    vn, _ = grand_mean_center(emotion_means(xn, ln, emotions)[0])
    vecn = EmotionVectors(vectors=vn.unsqueeze(0), emotions=emotions, layers=[0], norms=torch.ones(1))
    cn = vmap.ceilings(xn.unsqueeze(1), ln, vecn, vmap.rating_map(vecn, {"valence": np.arange(16.0)}, n_pcs=3), reps=4)
    assert cn["ceiling"][0][0] < c["ceiling"][0][0]
