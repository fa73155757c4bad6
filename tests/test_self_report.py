"""Self-report read-outs under steering (issue 22): word lists checked against human ratings, exact
multi-token scoring, zero strength is no change, and the statistics on planted shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.chat import continuation_ids
from emolib.study import self_report as sr
from emolib.study.scoring import sequence_logprobs
from emolib.vectors import EmotionVectors


def test_word_lists_match_the_human_ratings_they_claim():
    human = pytest.importorskip("emolib.study.human_ratings")
    spec = sr.word_lists()
    try:
        wk = human.warriner_norms(sorted({w for d in ("valence", "arousal") for v in spec[d].values() for w in v}))
    except human.NormsUnavailable:
        pytest.skip("Warriner norms not installed")
    val, aro = wk.valence, wk.arousal
    assert all(val[w] >= 6.5 for w in spec["valence"]["pleasant"])
    assert all(val[w] <= 3.5 for w in spec["valence"]["unpleasant"])
    assert all(aro[w] >= 5.5 for w in spec["arousal"]["high"])
    assert all(aro[w] <= 3.7 for w in spec["arousal"]["low"])
    # the arousal lists are balanced for valence: both lists' mean valence within one point
    hi = np.mean([val[w] for w in spec["arousal"]["high"]])
    lo = np.mean([val[w] for w in spec["arousal"]["low"]])
    assert abs(hi - lo) < 1.0
    assert len(spec["prompts"]) >= 5 and {p["person"] for p in spec["prompts"]} == {"first", "third"}


def test_log_odds_on_planted_probabilities():
    lp = np.log(np.array([[0.3, 0.1, 0.05, 0.05]]))
    assert sr.log_odds(lp, [0, 1], [2, 3])[0] == pytest.approx(np.log(0.4 / 0.1))


def test_multi_token_words_count_with_their_full_probability(tiny):
    model, tok = tiny
    ro = sr.make_readout(tok, ["i_feel", "she_feels"])
    ro.words = ["panicked", "calm"]  # " panicked" is two tokens in this tokenizer
    ro.word_ids = [[continuation_ids(tok, p, " " + w) for w in ro.words] for p in ro.prompts]
    assert len(ro.word_ids[0][0]) == 2 and len(ro.word_ids[0][1]) == 1
    got = sr.word_logprobs(model, tok, ro, None)
    want = sequence_logprobs(model, tok, [p.ids for p in ro.prompts], [ids[0] for ids in ro.word_ids])
    assert got[:, 0] == pytest.approx(want.numpy(), abs=1e-4)


def _vectors(width=64, layers=4, names=("happy", "sad", "calm", "afraid")):
    g = torch.Generator().manual_seed(0)
    return EmotionVectors(vectors=torch.randn(layers, len(names), width, generator=g), emotions=list(names),
                          layers=list(range(layers)), norms=torch.linspace(2, 4, layers), default_layer=2)


def test_zero_strength_is_no_shift_and_a_real_push_moves_the_read_out(tiny):
    model, tok = tiny
    vec = _vectors()
    rep = sr.run_self_report(model, tok, vec, ["happy", "sad"], window=1.0, multiples=[0.0, 3.0], layer=2,
                             n_random=2, prompt_ids=["i_feel", "she_feels"])
    # zero up to float32 rounding: conditions run side by side, and a batch of another size rounds differently
    assert np.abs(rep.valence["0.0"]).max() < 1e-5 and np.abs(rep.random_arousal["0.0"]).max() < 1e-5
    assert np.abs(rep.valence["3.0"]).max() > 1e-3
    assert rep.valence["3.0"].shape == (2, 2) and rep.random_valence["3.0"].shape == (2, 2)


def test_statistics_on_planted_shifts():
    rng = np.random.default_rng(0)
    n = 40
    val = rng.uniform(1, 9, n)
    rep = sr.SelfReport(emotions=[f"e{i}" for i in range(n)], strengths=[1.0], window=0.2, layer=3, prompts=["a"],
                        person=["first"], valence={"1.0": (val - 5)[:, None] * 0.5}, arousal={"1.0": rng.normal(0, 1, (n, 1))},
                        random_valence={"1.0": rng.normal(0, 0.1, (20, 1))},
                        random_arousal={"1.0": rng.normal(0, 0.1, (20, 1))}, shuffled_valence={}, shuffled_arousal={})
    st = sr.statistics(rep, {"valence": val, "arousal": rng.uniform(1, 9, n)}, n_boot=200, n_perm=200)
    assert st["valence@1"]["r"]["r"] == pytest.approx(1.0) and st["valence@1"]["r"]["p_perm"] < 0.01
    assert st["valence@1"]["beyond_random_share"] > 0.7
    assert abs(st["arousal@1"]["r"]["r"]) < 0.4
    rows = sr.rows(st, None, None, 1.0)
    assert {r["key"] for r in rows} >= {"selfreport_valence_r_x1", "selfreport_valence_beyond_random_x1"}
    assert st["valence@1"]["beyond_shuffled"] is None  # no shuffled control was run
    # A wide shuffled-label spread leaves fewer emotions beyond it than the narrow random one.
    rep.shuffled_valence = {"1.0": rng.normal(0, 0.6, (20, 1))}
    rep.shuffled_arousal = {"1.0": rng.normal(0, 0.6, (20, 1))}
    st = sr.statistics(rep, {"valence": val}, n_boot=50, n_perm=50)
    assert 0 < st["valence@1"]["beyond_shuffled"] < st["valence@1"]["beyond_random"]
    assert "label-shuffled" in sr.rows(st, None, None, 1.0)[1]["note"]


def test_shuffled_label_directions_are_built_like_vectors():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((60, 8)), dtype=torch.float32)
    labels = [f"e{i % 6}" for i in range(60)]
    d = sr.shuffled_label_directions(x, labels, n=4, seed=0)
    assert d.shape == (4, 8) and torch.isfinite(d).all()


def test_cluster_matrix_and_choice_slope_run_and_zero_strength_is_flat(tiny):
    model, tok = tiny
    names = ("happy", "calm", "afraid", "angry", "sad", "proud")  # six of the paper's clusters
    vec = _vectors(names=names)
    res = sr.cluster_feelings(model, tok, vec, strength=3.0, layer=2, n_random=2)
    k = len(res["clusters"])
    assert k >= 5 and np.asarray(res["delta"]).shape == (k, k) and 0 <= res["diagonal_wins"] <= k
    flat = sr.cluster_feelings(model, tok, vec, strength=0.0, layer=2, n_random=1)
    assert np.abs(np.asarray(flat["delta"])).max() == 0
    ch = sr.valence_choice(model, tok, vec, list(names), np.array([8.5, 6.9, 2.3, 2.5, 2.1, 7.0]), strength=3.0,
                           layer=2, n_pairs=2, n_random=2, n_boot=50)
    assert ch["n"] == 6 and ch["n_items"] == 4 and np.isfinite(ch["slope_per_valence_point"])
    assert 0 < ch["base_p_pleasant"] < 1 and ch["ci95"][0] <= ch["ci95"][1]
