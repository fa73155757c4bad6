"""Stage 06 (causal steering): the A/B read-out, Elo, calibration, controls, and exact no-ops."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

from emolib.chat import build_prompt
from emolib.study import controls, feelings, preferences, pressure
from emolib.study import strength as calibration
from emolib.study.scoring import choice_prompt, last_token_logits, option_readout
from emolib.vectors import EmotionVectors

# ---- tokenizers ---------------------------------------------------------------------------------------

CORPUS = [
    "Would you prefer to (A) bake bread or (B) file taxes? (A) is nice. (B) is fine.",
    "Human: Which one do you choose?\n\nAssistant: (A) because it is better than (B).",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat.",
    "Options (A), (B) and (C) were shown; answer (A) or (B) and explain the choice.",
] * 20


def _bpe_tokenizer(split_punctuation: bool):
    """A byte-level BPE tokenizer trained in memory. With ``split_punctuation`` it uses GPT-2's
    pre-tokenizer regex (so "(" and "A" are never merged); without it, "(A" becomes one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_punctuation)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def gpt2_style():
    return _bpe_tokenizer(split_punctuation=True)


@pytest.fixture(scope="module")
def merging():
    tok = _bpe_tokenizer(split_punctuation=False)
    assert len(tok(" (A", add_special_tokens=False)["input_ids"]) == 1, "test set-up: ' (A' should be one token"
    return tok


QUESTION = "Would you prefer to (A) bake a loaf of bread or (B) sort a pile of receipts?"


def _check_readout(tok, expect_merged: bool):
    ro = option_readout(tok, QUESTION)
    assert ro.merged is expect_merged
    decoded = [tok.decode([t]) for t in ro.token_ids]
    assert [d.strip() for d in decoded] == (["(A", "(B"] if expect_merged else ["A", "B"])
    # the read tokens are exactly what the model would write next after the prompt
    prompt, ro2 = choice_prompt(tok, QUESTION)
    assert ro2 == ro
    for letter, tid in zip("AB", ro.token_ids):
        full = build_prompt(tok, QUESTION, "(" + letter).ids
        assert full == prompt.ids + [tid]
    return prompt, ro


def test_ab_readout_default_tokenizer(tiny):
    _, tok = tiny  # the default model's tokenizer (chat template, "(" then "A")
    prompt, ro = _check_readout(tok, expect_merged=False)
    assert ro.prefill == "(" and prompt.text.endswith("assistant\n(")


def test_ab_readout_gpt2_style_bpe(gpt2_style):
    prompt, ro = _check_readout(gpt2_style, expect_merged=False)
    assert prompt.text.endswith("Assistant: (")


def test_ab_readout_tokenizer_that_merges_opener_and_letter(merging):
    prompt, ro = _check_readout(merging, expect_merged=True)
    assert ro.prefill == "" and prompt.text.endswith("Assistant:")


@pytest.mark.parametrize("which", ["default", "gpt2_style", "merging"])
def test_activity_spans_cover_exactly_the_activity(which, tiny, gpt2_style, merging):
    tok = {"default": tiny[1], "gpt2_style": gpt2_style, "merging": merging}[which]
    texts = ["bake a loaf of bread", "sort a pile of receipts"]
    items = preferences.pair_items(tok, texts, [(0, 1)])
    assert len(items) == 2  # both orders
    for it in items:
        for slot, act in (("A", it.first), ("B", it.second)):
            a, b = it.prompt.spans[slot]
            assert tok.decode(it.prompt.ids[a:b]).strip() == texts[act]


# ---- Elo / Bradley-Terry -------------------------------------------------------------------------------


def test_bradley_terry_recovers_planted_order_and_bias():
    rng = np.random.default_rng(0)
    n = 16
    truth = np.linspace(-2.5, 2.5, n)[rng.permutation(n)]
    pairs = preferences.pair_design(n, None)
    first = [i for i, j in pairs] + [j for i, j in pairs]
    second = [j for i, j in pairs] + [i for i, j in pairs]
    bias = 0.9  # a strong lean towards option (A), like small models show
    z = truth[first] - truth[second] + bias
    p = 1 / (1 + np.exp(-z))
    p_noisy = np.clip(p + rng.normal(0, 0.05, size=p.shape), 0, 1)
    fit = preferences.fit_bradley_terry(first, second, p_noisy, n)
    from scipy.stats import spearmanr

    assert spearmanr(fit.scores, truth).statistic > 0.97
    assert abs(fit.bias - bias) < 0.15
    assert np.argmax(fit.elo) == np.argmax(truth) and np.argmin(fit.elo) == np.argmin(truth)
    # hard outcomes (both orders averaged, then win/loss) keep the order too
    f, g, o = preferences.hard_outcomes(first, second, p)
    hard = preferences.fit_bradley_terry(f, g, o, n, position_bias=False)
    assert spearmanr(hard.scores, truth).statistic > 0.95


def test_pair_design_balanced_and_complete():
    assert len(preferences.pair_design(64, None)) == 64 * 63 // 2
    pairs = preferences.pair_design(64, 6, seed=3)
    deg = np.bincount(np.array(pairs).ravel(), minlength=64)
    assert deg.min() >= 4 and deg.max() <= 6 and all(i < j for i, j in pairs)
    half = preferences.split_half(["x"] * 8 + ["y"] * 8, seed=1)
    assert len(half) == 8 and sum(i < 8 for i in half) == 4


def test_spread_pick_spans_the_range():
    names = list("abcdefg")
    vals = [0.1, -0.5, 0.7, 0.0, 0.3, -0.2, 0.5]
    pick = preferences.spread_pick(names, vals, 3)
    assert pick[0] == "b" and pick[-1] == "c" and len(pick) == 3


# ---- calibration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.37, 1.3, 5.0])
def test_calibration_finds_planted_threshold(threshold):
    grid = np.round(np.arange(0.05, 8.01, 0.05), 4)
    damage = 1 + 0.5 * (grid / threshold) ** 2  # crosses the 1.5 ceiling exactly at `threshold`
    found = calibration.usable_strength(grid, damage, ceiling=1.5)
    assert abs(found - threshold) < 0.05
    coarse = calibration.usable_strength(grid, damage, ceiling=1.5, interpolate=False)
    assert coarse <= threshold < coarse + 0.05 + 1e-9


def test_calibration_window_is_not_extended_by_a_later_dip():
    s = [0.5, 1, 2, 4]
    assert calibration.usable_strength(s, [1.1, 1.6, 1.2, 1.3], 1.5, interpolate=False) == 0.5
    assert calibration.usable_strength(s, [1.1, 1.2, 1.3, 1.4], 1.5) == 4  # never crossed: largest swept
    w, overall = calibration.windows(["e", "r"], ["emotion", "random"], [-2, -1, 1, 2],
                                     np.array([[2.0, 1.2, 1.1, 1.4], [1.0, 1.0, 1.0, 1.0]]), 1.5)
    assert w["e"]["positive"] == 2 and w["e"]["negative"] < 2 and overall == w["e"]["both"]


# ---- controls -------------------------------------------------------------------------------------------


def test_random_directions_reproducible_unit_and_isolated():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = controls.random_directions(64, 5, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "random_directions must not touch the global RNG"
    assert torch.allclose(a.norm(dim=-1), torch.ones(5))
    assert torch.equal(a, controls.random_directions(64, 5, seed=7))
    assert not torch.equal(a, controls.random_directions(64, 5, seed=8))
    band = controls.RandomSpread.of([-0.2, 0.1, 0.3])
    assert band.exceeded_by(0.31, "up") and not band.exceeded_by(0.29) and band.exceeded_by(-0.3, "down")


# ---- strength 0 is an exact no-op for every score -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vectors(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    n_l, w = len(model.model.layers), model.config.hidden_size
    emos = ["happy", "sad", "calm", "desperate"]
    return EmotionVectors(vectors=torch.randn(n_l, len(emos), w, generator=g), emotions=emos,
                          layers=list(range(n_l)), norms=torch.full((n_l,), 3.0), default_layer=2)


def test_strength_zero_leaves_every_score_unchanged(tiny, tiny_vectors):
    model, tok = tiny
    ev = tiny_vectors
    # feelings: every log-prob change is zero up to float32 rounding (conditions share a batch, where
    # rows of different widths round differently)
    fr = feelings.feelings_matrices(model, tok, ev, ev.emotions, strength=0.0, prompts=["he_feels", "i_feel"],
                                    n_random=1)
    assert all(np.abs(np.asarray(fr.delta[p])).max() < 1e-5 for p in fr.prompts)
    # preferences: steered re-scoring at 0 reproduces the baseline bit for bit
    texts = [a["text"] for a in preferences.load_activities()[:6]]
    items = preferences.pair_items(tok, texts, preferences.pair_design(6, None))
    steered = [0, 2, 4]
    base, _ = preferences.score_pairs(model, tok, items, None, steered)
    zero, _ = preferences.score_pairs(model, tok, items, ev.steering("happy", 0.0, layers=None), steered)
    assert np.array_equal(base, zero)
    some, _ = preferences.score_pairs(model, tok, items, ev.steering("happy", 5.0, layers=None), steered)
    assert not np.array_equal(base, some), "steering at strength 5 must change some choice probability"
    # pressure: P(misaligned) identical
    items_p = pressure.build_items(tok, pressure.load_scenarios(per_family=1))
    b, _ = pressure.p_misaligned(model, tok, items_p)
    z, _ = pressure.p_misaligned(model, tok, items_p, ev.steering("desperate", 0.0, layers=None))
    assert np.array_equal(b, z)
    # calibration: no damage at all
    ppl, kl, _ = calibration.damage_sweep(model, tok, ["A short neutral sentence about tables and chairs."],
                                          [ev.steering("calm", 1.0, layers=None)], [0.0, 2.0])
    assert ppl[0, 0] == 1.0 and kl[0, 0] == 0.0 and ppl[0, 1] != 1.0


def test_activity_span_steering_touches_only_later_positions(tiny, tiny_vectors):
    """Steering on the (B) activity's tokens leaves (A) and the text before it alone but changes
    the final read-out; the span is where steer() adds the vector."""
    from emolib.capture import record_residual
    from emolib.steering import apply_steering

    model, tok = tiny
    items = preferences.pair_items(tok, ["bake bread", "sort receipts"], [(0, 1)], both_orders=False)
    it = items[0]
    ids = torch.tensor([it.prompt.ids])
    st = tiny_vectors.steering("sad", 2.0, layers=1)
    with torch.inference_mode():
        with record_residual(model, [1]) as plain:
            model(ids)
        with apply_steering(model, st, (it.prompt.spans["B"],)), record_residual(model, [1]) as rec:
            model(ids)
    diff = (rec[1][0] - plain[1][0]).abs().amax(-1)[0]
    a, b = it.prompt.spans["B"]
    assert torch.all(diff[:a] == 0) and torch.all(diff[a:b] > 0)
    base = last_token_logits(model, tok, [it.prompt.ids])
    steered = last_token_logits(model, tok, [it.prompt.ids], st, (it.prompt.spans["B"],))
    assert not torch.equal(base, steered)


def test_batched_scores_match_single_rows(tiny):
    model, tok = tiny
    prompts = [build_prompt(tok, q, "I feel").ids for q in ["How do you feel?", "How are you feeling after that long day?"]]
    both = last_token_logits(model, tok, prompts, batch_size=2)
    one = last_token_logits(model, tok, prompts[:1], batch_size=1)
    assert torch.allclose(both[0], one[0], atol=1e-4)


# ---- package data ----------------------------------------------------------------------------------------


def test_activities_and_scenarios_data():
    acts = preferences.load_activities()
    assert len(acts) == 64 and len({a["text"] for a in acts}) == 64
    cats = [a["category"] for a in acts]
    assert all(cats.count(c) == 8 for c in ["Helpful", "Engaging", "Social", "Self-curiosity", "Neutral",
                                             "Aversive", "Misaligned", "Unsafe"])
    sc = pressure.load_scenarios()
    fams = [s.family for s in sc]
    assert set(fams) == {"shutdown_leverage", "impossible_tests", "implausible_claim"}
    assert all(fams.count(f) >= 10 for f in set(fams))
    assert len({s.id for s in sc}) == len(sc)
    s0 = sc[0]
    a, b = pressure.choice_text(s0, True), pressure.choice_text(s0, False)
    assert a != b and f"(A) {s0.misaligned}" in a and f"(B) {s0.misaligned}" in b
    doc = json.loads(resources.files("emolib.data").joinpath("pressure_scenarios.json").read_text())
    assert "own words" in doc["provenance"]
    assert len(pressure.load_scenarios(per_family=2)) == 6
