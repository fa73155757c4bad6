"""The paper's remaining sections (issue 20): two-speaker probes, deflection vectors, base vs instruct.

Planted-signal tests: synthetic activations in which the Human's emotion is written on the Human's tokens
must come back in the present-speaker probes and not in the other-speaker ones; a deflection vector inside
the story subspace must keep none of its norm; a base/instruct shift equal to the paper's table must
correlate perfectly with it. Plus the data's gates and the token masks on real text.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.capture import masked_means, token_activations
from emolib.study import deflection as dfl
from emolib.study import post_training as pt
from emolib.study import speakers as spk
from emolib.study.corpus import check_dialogues
from emolib.vectors import EmotionVectors


@pytest.fixture(scope="module")
def tiny():
    from emolib.models import load_model

    return load_model("tiny-random")


def test_datasets_are_the_size_the_issue_asks_and_pass_their_gates():
    two, scenes = spk.load_dialogues(), dfl.load_deflection()
    s = spk.dataset_summary(two)
    assert s["n_dialogues"] >= 240 and len(s["emotions"]) == 12
    assert min(s["per_speaker_min"].values()) >= 20 and 6 <= s["exchanges_min"] <= s["exchanges_max"] <= 10
    d = dfl.dataset_summary(scenes)
    assert d["n_dialogues"] >= 300 and d["n_targets"] >= 15 and d["per_target_min"] >= 20
    assert d["displayed_per_target_min"] >= 4
    assert {"desperate", "angry", "frustrated", "tired", "afraid", "happy", "sad"} <= set(d["targets"])
    for recs in (two, scenes):
        rep = check_dialogues(recs)
        assert rep.ok, rep.lines(5)
    b = spk.blind_check()
    assert b["n"] >= 40 and b["human_top1"] > 3 * b["chance_top1"]


def test_dialogue_gates_catch_planted_faults():
    two = spk.load_dialogues()[:2]
    leak = dict(two[0], text=two[0]["text"] + f"\n\nHuman: I feel so {two[0]['human_emotion']} today.\n\nAssistant: Okay.")
    copy = dict(two[1], id="copy", text=two[1]["text"])
    counts = check_dialogues([leak, two[1], copy]).counts()
    assert {"leakage", "shared_sentence"} <= set(counts)
    scene = dfl.load_deflection()[0]
    said = dict(scene, turns=[{"speaker": scene["character"], "text": f"I'm not {scene['target']} at all, you know."}])
    assert "leakage" in check_dialogues([said]).counts()


def test_masked_means_matches_one_text_at_a_time(tiny):
    model, tok, info = tiny
    recs = spk.load_dialogues()[:3]
    enc = [spk.role_masks(tok, r["text"]) for r in recs]
    batched, counts = masked_means(model, tok, [e[0] for e in enc], [e[1] for e in enc], batch_size=3)
    for i, (ids, mask) in enumerate(enc):
        acts, _ = token_activations(model, tok, input_ids=torch.tensor([ids]))
        for g in range(2):
            want = acts[mask[g]].mean(0)
            assert torch.allclose(batched[i, g], want, atol=1e-4)
        assert counts[i].tolist() == mask.sum(1).tolist()


def test_role_and_character_masks_pick_the_right_words(tiny):
    _, tok, _ = tiny
    rec = spk.load_dialogues()[0]
    ids, mask = spk.role_masks(tok, rec["text"])
    human = tok.decode([t for t, m in zip(ids, mask[0]) if m])
    assistant = tok.decode([t for t, m in zip(ids, mask[1]) if m])
    first_h = rec["text"].split("\n\nAssistant:")[0].removeprefix("Human:").strip()
    first_a = rec["text"].split("\n\nAssistant:")[1].split("\n\nHuman:")[0].strip()
    assert first_h[:40] in human and first_h[:40] not in assistant
    assert first_a[:40] in assistant and first_a[:40] not in human
    scene = dfl.load_deflection()[0]
    ids, m = dfl.character_mask(tok, scene)
    said = tok.decode([t for t, k in zip(ids, m[0]) if k])
    mine = [t["text"] for t in scene["turns"] if t["speaker"] == scene["character"]]
    theirs = [t["text"] for t in scene["turns"] if t["speaker"] != scene["character"]]
    assert all(x[:30] in said for x in mine) and not any(x[:30] in said for x in theirs)
    assert scene["scenario"][:30] not in said


def _planted(n: int = 240, width: int = 32, layers: int = 2, seed: int = 0):
    """Activations where each speaker's tokens carry that speaker's emotion only."""
    rng = np.random.default_rng(seed)
    emotions = [f"e{i}" for i in range(6)]
    dirs = {e: rng.standard_normal(width) * 3 for e in emotions}
    human = [emotions[i % 6] for i in range(n)]
    assistant = list(rng.permutation(human))
    x = rng.standard_normal((n, 2, layers, width)) * 0.5
    for i in range(n):
        x[i, 0] += dirs[human[i]]
        x[i, 1] += dirs[assistant[i]] * 0.8
    acts = spk.SpeakerActivations(torch.tensor(x, dtype=torch.float32), torch.ones(n, 2), list(range(layers)),
                                  {"human": human, "assistant": assistant}, [str(i) for i in range(n)],
                                  [i % 10 for i in range(n)])
    return acts, emotions, dirs


def test_planted_speaker_signal_comes_back_in_the_present_probes_only():
    acts, emotions, dirs = _planted()
    probes = spk.build_probes(acts, torch.ones(2), None, 0.0)
    stories = EmotionVectors(torch.tensor(np.stack([[dirs[e] for e in emotions]] * 2), dtype=torch.float32),
                             emotions, [0, 1], torch.ones(2), default_layer=1)
    sets = spk.probe_sets_at(probes, stories, 1)
    same, _ = spk.set_matrix(sets)
    ix = {n: i for i, n in enumerate(sets)}
    assert same[ix["present: Human"], ix["present: Assistant"]] > 0.9
    assert same[ix["present: Human"], ix["story"]] > 0.9
    assert abs(same[ix["present: Human"], ix["other: on Assistant turns"]]) < 0.3
    floor = spk.shuffled_floor(acts, torch.ones(2), None, 0.0, 1, reps=3)
    assert floor["mean_abs"] < 0.3
    acc = spk.heldout_accuracy(acts, torch.ones(2), None, 0.0, 1, stories, n_folds=5)
    assert acc["present: Human"]["probe_top1"] > 0.9 and acc["present: Human"]["story_top1"] > 0.9
    assert acc["other: on Assistant turns"]["probe_top1"] < 0.5


def test_deflection_residual_share_and_its_random_floor():
    rng = np.random.default_rng(1)
    width, n = 24, 8
    s = rng.standard_normal((n, width))
    stories = EmotionVectors(torch.tensor(s[None], dtype=torch.float32), [f"s{i}" for i in range(n)], [0],
                             torch.ones(1), default_layer=0)
    basis = dfl.story_subspace(stories, 0)
    inside = (s[0] - s.mean(0)) * 2 + (s[1] - s.mean(0))
    assert dfl.residual_fraction(inside[None], basis)[0] == pytest.approx(0.0, abs=1e-6)
    rand = dfl.residual_fraction(rng.standard_normal((4000, width)), basis)
    assert rand.mean() == pytest.approx(np.sqrt(1 - basis.shape[0] / width), abs=0.03)


def test_base_instruct_shift_equal_to_the_papers_table_correlates_perfectly():
    table = pt.paper_table()
    emotions = list(table)[:40]
    n_p, layers = 6, [0, 1]
    diff = np.asarray([table[e]["diff"] for e in emotions])
    base = np.random.default_rng(0).standard_normal((n_p, len(layers), len(emotions))) * 0.01
    inst = base + diff[None, None, :]
    ro = pt.PairReadout({"base": base, "instruct": inst}, ["challenging"] * 4 + ["neutral"] * 2, layers, emotions,
                        {"base": "b", "instruct": "i"})
    df, stats = pt.compare(ro, 1, n_boot=50)
    assert stats["spearman_with_paper"]["r"] == pytest.approx(1.0, abs=1e-3)  # ties in the table
    assert stats["r_change_across_prompt_types"] == pytest.approx(1.0, abs=1e-6)
    assert list(df["emotion"][:3]) == sorted(emotions, key=lambda e: -table[e]["diff"])[:3]


def test_base_and_instruct_read_the_prompts_at_the_header(tiny):
    from emolib.models import load_model

    model, tok, info = tiny
    base, _, _ = load_model("tiny-random-base")
    emos = ["happy", "sad", "calm"]
    g = torch.Generator().manual_seed(0)
    vec = EmotionVectors(torch.randn(info.n_layers, 3, info.width, generator=g), emos, list(range(info.n_layers)),
                         torch.ones(info.n_layers), default_layer=2)
    ro = pt.read_pair({"base": base, "instruct": model}, tok, vec)
    n = len(pt.prompts()["challenging"]) + len(pt.prompts()["neutral"])
    assert ro.cos["base"].shape == (n, info.n_layers, 3)
    assert not np.allclose(ro.cos["base"], ro.cos["instruct"])  # the perturbed copy is another model
    same = pt.read_pair({"base": model, "instruct": model}, tok, vec)
    assert np.allclose(same.cos["base"], same.cos["instruct"])


def test_reply_logprobs_is_the_sum_over_the_reply_tokens(tiny):
    from emolib.chat import build_prompt, continuation_ids
    from emolib.study.scoring import reply_logprobs

    model, tok, _ = tiny
    lp = reply_logprobs(model, tok, ["Hi."], ["You're safe now.", "I'm sorry."])
    cp = build_prompt(tok, "Hi.")
    cont = continuation_ids(tok, cp, "I'm sorry.")
    with torch.inference_mode():
        logits = model(torch.tensor([cp.ids + cont])).logits[0].float().log_softmax(-1)
    want = sum(float(logits[len(cp.ids) - 1 + k, t]) for k, t in enumerate(cont))
    assert float(lp[0, 1]) == pytest.approx(want, abs=1e-3)
