"""Stage 03 checks: mechanics on the tiny random model with random vectors, and the scoring on planted data."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch

from emolib.capture import token_activations
from emolib.chat import format_user_turn
from emolib.emotions import WORKING_12, all_emotions
from emolib.study import dissociation, intensity, logit_lens, story_tokens, validation
from emolib.study import implicit as scenarios
from emolib.study.readout import probe_cosines, residual_at
from emolib.vectors import EmotionVectors


@pytest.fixture(scope="module")
def rvec(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(3)
    n_layers, width = len(model.model.layers), model.config.hidden_size
    return EmotionVectors(vectors=torch.randn(n_layers, 12, width, generator=g), emotions=list(WORKING_12),
                          layers=list(range(n_layers)), norms=torch.ones(n_layers), default_layer=2,
                          center=0.1 * torch.randn(n_layers, width, generator=g))


# ---- package data ------------------------------------------------------------------------------


def test_prompt_data_is_complete_and_does_not_name_emotions():
    sc = validation.scenarios()
    assert [s["emotion"] for s in sc] == list(WORKING_12)
    for s in sc:
        assert not re.search(rf"\b{s['emotion'][:5]}", s["text"].lower()), s
    tpl = validation.intensity_templates()
    assert len(tpl) >= 4 and all("{x}" in t["template"] and len(t["numbers"]) >= 6 for t in tpl)
    assert all(set(t["expected"]) <= set(validation.validation_prompts()["intensity_emotions"]) for t in tpl)
    assert all(t["numbers"] == sorted(t["numbers"]) for t in tpl)
    uva = validation.user_vs_assistant_prompts()
    assert len(uva) == 8 and len({u["id"] for u in uva}) == 8
    assert set(validation.validation_prompts()["intensity_emotions"]) <= set(all_emotions())


# ---- reading at positions ----------------------------------------------------------------------


def test_residual_at_batched_equals_single_and_capture(tiny):
    model, tok = tiny
    texts = ["A short one.", "A much longer message that needs a lot more tokens than the first.", "Mid length text."]
    seqs = [tok(t)["input_ids"] for t in texts]
    pos = [[0, len(s) - 1] for s in seqs]
    batched = residual_at(model, tok, seqs, pos, [1, 3], batch_size=3)
    for s, p, b in zip(seqs, pos, batched):
        single = residual_at(model, tok, [s], [p], [1, 3])[0]
        assert b.shape == (2, 2, model.config.hidden_size)
        torch.testing.assert_close(b, single, atol=1e-4, rtol=1e-4)
        ref, _ = token_activations(model, tok, input_ids=torch.tensor(s), layers=[1, 3])
        torch.testing.assert_close(b, ref[p], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        residual_at(model, tok, seqs[:1], [[99]], [1])


def test_probe_cosines_centre_with_the_vectors_grand_mean(rvec):
    rvec = dataclasses.replace(rvec, center=rvec.center * 100)  # a large common component, as in real models
    acts = rvec.center[2] + 3 * rvec.vector("sad", 2)  # an activation that is "sad" after centring
    cos = probe_cosines(rvec, acts, 2)
    assert cos[rvec.index("sad")] == pytest.approx(1.0, abs=1e-5)
    raw = probe_cosines(rvec, acts, 2, center=False)
    assert raw[rvec.index("sad")] < 0.9


# ---- check 1: logit lens ---------------------------------------------------------------------------


def test_logit_lens_finds_a_planted_token(tiny, rvec):
    model, tok = tiny
    w = model.get_output_embeddings().weight.detach().float()
    targets = [tok.encode(" tears")[0], tok.encode(" calm")[0]]
    vec = rvec.select(["sad", "calm"])
    vec.vectors[vec.layers.index(2)] = w[targets] / model.model.norm.weight.detach().float()
    df = logit_lens.logit_lens(model, tok, vec, k=3)
    assert len(df) == 2 * 2 * 3 and set(df.columns) >= {"emotion", "direction", "rank", "token", "logit"}
    top1 = df[(df.direction == "top") & (df["rank"] == 1)].set_index("emotion")["token_id"]
    assert top1["sad"] == targets[0] and top1["calm"] == targets[1]
    assert (df[df.direction == "top"].logit.min() > df[df.direction == "bottom"].logit.max())
    wide = logit_lens.lens_table(df)
    assert list(wide.emotion) == ["sad", "calm"] and wide.top.iloc[0].startswith(" tears")
    hits = logit_lens.lens_hits(df, {"sad": ["tear"], "calm": ["zzz"]})
    assert hits.set_index("emotion")["hit"].to_dict() == {"sad": True, "calm": False}


# ---- check 2: stories ------------------------------------------------------------------------------


def test_story_token_values_and_ranks(tiny, rvec):
    model, tok = tiny
    texts = ["She sat by the window and watched the rain for a long time, not moving at all.",
             "He ran down the street, shouting the news to everyone he passed."]
    st = story_tokens.story_token_values(model, tok, rvec, texts, ["sad", "happy"], ids=["a", "b"])
    assert [v.shape[1] for v in st.values] == [12, 12]
    assert [len(t) for t in st.tokens] == [v.shape[0] for v in st.values]
    table = story_tokens.story_token_table(st)
    assert len(table) == sum(v.size for v in st.values) and table.scaled.abs().max() <= 1
    ranks = story_tokens.own_probe_ranks(st, start=5)
    assert ranks.own_rank.between(1, 12).all() and list(ranks.story_id) == ["a", "b"]
    h = st.heat(0)
    assert h.probe == "sad" and np.isnan(h.scaled[0])
    recs = [{"id": f"x-{e}-{i}", "emotion": e, "kind": "story"} for e in ("sad", "happy") for i in range(1, 4)]
    picked = story_tokens.pick_stories(recs, ["sad", "happy"], per_emotion=1, prefer_ids=["x-happy-1"])
    assert [r["id"] for r in picked] == ["x-sad-3", "x-happy-1"]


# ---- checks 3 and 6: scenarios ------------------------------------------------------------------


def test_diagonal_scores_on_planted_matrices():
    names = list("abcd")
    eye = np.eye(4) + 0.01
    sc = scenarios.diagonal_scores(eye, names, names)
    assert sc["diagonal_wins"] == 4 and sc["mean_rank"] == 1.0 and sc["column_wins"] == 4
    rev = np.eye(4)[::-1]
    sc = scenarios.diagonal_scores(rev, names, names)
    assert sc["diagonal_wins"] == 0 and sc["mean_rank"] == 2.0
    # a probe high everywhere wins every raw row; standardising each column removes it
    m = np.eye(4) * 0.1
    m[:, 0] += 1.0
    assert scenarios.diagonal_scores(m, names, names)["diagonal_wins"] == 1
    assert scenarios.diagonal_scores(scenarios.standardise_columns(m), names, names)["diagonal_wins"] == 4


def test_scenario_matrix_reads_the_header_token(tiny, rvec):
    model, tok = tiny
    sc = validation.scenarios()
    df = scenarios.scenario_matrix(model, tok, rvec, sc)
    assert len(df) == 144 and df.cosine.between(-1, 1).all()
    m = scenarios.pivot(df)
    assert list(m.index) == list(WORKING_12) and list(m.columns) == list(WORKING_12)
    # the same number by hand at the header token
    fp = format_user_turn(tok, sc[4]["text"])
    acts, _ = token_activations(model, tok, input_ids=torch.tensor(fp.ids), layers=[2])
    by_hand = probe_cosines(rvec, acts[fp.header_index, 0], 2)
    assert m.iloc[4].to_numpy() == pytest.approx(by_hand.numpy(), abs=1e-4)
    layers = scenarios.scenario_layers(model, tok, rvec, sc[:4], layers=[1, 2])
    scores = scenarios.scenario_scores(layers)
    assert len(scores) == 4 and set(scores.scoring) == {"standardised", "raw"}
    at2 = layers[layers.layer == 2]
    assert at2.cosine.to_numpy() == pytest.approx(df[df.scenario.isin(WORKING_12[:4])].query(
        "probe in @WORKING_12[:4]").cosine.to_numpy(), abs=1e-4)


# ---- check 4: intensity ----------------------------------------------------------------------------


def test_intensity_readings_and_planted_trends(tiny, rvec):
    model, tok = tiny
    tpl = validation.intensity_templates(["dose", "exam_pass"])
    r = intensity.intensity_readings(model, tok, rvec, tpl, ["afraid", "calm"])
    assert len(r) == sum(len(t["numbers"]) for t in tpl) * 2
    assert "32,000 mg" in " ".join(r.text)
    planted = r.copy()
    planted["cosine"] = np.where(planted.emotion == "afraid", planted.x, -planted.x).astype(float)
    tr = intensity.intensity_trends(planted, tpl).set_index(["template", "emotion"])
    assert tr.loc[("dose", "afraid"), "rho"] == pytest.approx(1.0)
    assert tr.loc[("dose", "afraid"), "agrees"] and tr.loc[("dose", "calm"), "agrees"]
    assert not tr.loc[("exam_pass", "afraid"), "agrees"]  # expected to fall, planted to rise
    assert tr.loc[("exam_pass", "calm"), "expected"] == 0 and tr.loc[("exam_pass", "calm"), "agrees"] is None
    sm = intensity.intensity_summary(tr.reset_index())
    assert sm["n_expected"] == 3 and sm["n_agree"] == 2


# ---- check 5: user vs assistant ---------------------------------------------------------------------


def test_dissociation_readings_with_generated_replies(tiny, rvec):
    model, tok = tiny
    items = validation.user_vs_assistant_prompts(3)
    df, rep = dissociation.dissociation_readings(model, tok, rvec, items, ["afraid", "calm", "happy"], max_new_tokens=5)
    assert len(df) == 9 and df[["user_last", "header"]].notna().all().all()
    assert all(0 < len(r) <= 5 for r in rep.ids) or df.reply.isna().any()
    # the reply reading is the mean over the reply tokens, read in context
    fp = format_user_turn(tok, items[0]["text"])
    if rep.ids[0]:
        acts, _ = token_activations(model, tok, input_ids=torch.tensor(fp.ids + rep.ids[0]), layers=[2])
        want = probe_cosines(rvec.select(["afraid", "calm", "happy"]), acts[len(fp.ids):, 0], 2).mean(0)
        got = df[df.prompt == items[0]["id"]].reply.to_numpy()
        assert got == pytest.approx(want.numpy(), abs=1e-4)
    # batched greedy replies equal one-by-one greedy replies (left padding is right)
    single = dissociation.generate_replies(model, tok, [format_user_turn(tok, items[2]["text"])], max_new_tokens=5)
    assert single.ids[0] == rep.ids[2]


def test_dissociation_stats_on_planted_readings():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(8):
        for e in range(12):
            h = rng.normal()
            rows.append({"prompt": p, "emotion": e, "user_last": rng.normal(), "header": h, "reply": 2 * h + 1})
    st = dissociation.dissociation_stats(pd.DataFrame(rows)).set_index("pair")
    assert st.loc["header~reply", "r_pooled"] == pytest.approx(1.0)
    assert abs(st.loc["user_last~header", "r_pooled"]) < 0.4
    assert st.loc["header~reply", "r_within"] == pytest.approx(1.0)


def test_summary_rows_have_the_metric_fields():
    sc = pd.DataFrame([{"layer": 5, "scoring": "standardised", "diagonal_wins": 7, "mean_rank": 2.0, "column_wins": 6,
                        "n": 12, "chance_mean_rank": 6.5},
                       {"layer": 5, "scoring": "raw", "diagonal_wins": 3, "mean_rank": 4.0, "column_wins": 2,
                        "n": 12, "chance_mean_rank": 6.5}])
    dis = pd.DataFrame([{"pair": "user_last~header", "r_pooled": 0.2, "r_within": 0.1, "n": 96},
                        {"pair": "header~reply", "r_pooled": 0.8, "r_within": 0.5, "n": 96}])
    rows = validation.summary_rows(scenario_scores=sc, layer=5, dissociation=dis, layer_scores=sc)
    keys = [r["key"] for r in rows]
    assert "scenario_wins_standardised" in keys and "r_header_vs_reply" in keys and "scenario_best_layer" in keys
    assert all({"key", "label", "ours", "paper", "note"} <= set(r) for r in rows)
    assert dict(zip(keys, [r["ours"] for r in rows]))["scenario_wins_raw"] == 3
    assert len(validation.summary_table(rows)) == len(rows)


def test_readout_leaves_no_hooks_even_after_an_error(tiny):
    from emolib.steering import active_hooks

    model, tok = tiny
    seqs = [tok("Some text here.")["input_ids"]]
    residual_at(model, tok, seqs, [[0]], [1])
    assert active_hooks(model) == 0
    with pytest.raises((IndexError, RuntimeError)):
        residual_at(model, tok, [[10**9]], [[0]], [1])  # an out-of-vocabulary id fails inside the forward
    assert active_hooks(model) == 0
