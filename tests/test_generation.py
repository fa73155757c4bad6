"""Batched, seeded, resumable generation (emolib.generation), on the tiny random model."""

from __future__ import annotations

import json

import pytest

from emolib.engines.sampling import SamplingSettings, item_seed, sample_batch
from emolib.study.generation import Prompt, generate_to_store, plan_batches
from emolib.study.store import JsonlStore


def _texts(tok, n):
    msgs = ["Hi.", "Write a story about a dog on a beach at dawn.", "What is two plus two?",
            "List three colours.", "Tell me about the moon and the tides in some detail, please.",
            "Say nothing.", "A haiku about rain.", "Why is the sky blue? Explain for a child of eight."]
    return [tok.apply_chat_template([{"role": "user", "content": msgs[i % len(msgs)] + " " * (i // len(msgs))}],
                                    tokenize=False, add_generation_prompt=True) for i in range(n)]


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok = tiny
    texts = _texts(tok, 5)  # different lengths: left padding is exercised
    s = SamplingSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.3)
    batched = sample_batch(model, tok, texts, [0] * 5, s)
    single = [sample_batch(model, tok, [t], [0], s)[0] for t in texts]
    assert [b.text for b in batched] == [x.text for x in single]
    assert all(b.n_new_tokens == 12 and b.finish == "length" for b in batched)


def test_sampling_depends_on_item_seed_not_batch_partners(tiny):
    model, tok = tiny
    texts = _texts(tok, 4)
    s = SamplingSettings(max_new_tokens=10, temperature=1.0, top_p=0.9)
    a = sample_batch(model, tok, texts, [11, 12, 13, 14], s)
    b = sample_batch(model, tok, texts[::-1], [14, 13, 12, 11], s)[::-1]
    c = sample_batch(model, tok, texts[1:2], [12], s)
    assert [x.text for x in a] == [x.text for x in b]
    assert a[1].text == c[0].text
    d = sample_batch(model, tok, texts[1:2], [99], s)
    assert d[0].text != a[1].text  # another seed gives another sample


def test_rows_that_end_early_leave_the_others_unchanged(tiny):
    model, tok = tiny
    texts = _texts(tok, 4)
    s = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=1.0)
    free = sample_batch(model, tok, texts, [1, 2, 3, 4], s)
    assert all(o.finish == "length" and o.n_new_tokens == 8 for o in free)
    k = next(i for i in range(2, 8) if free[0].token_ids[i] not in free[0].token_ids[:i])
    stop = free[0].token_ids[k]  # make this token an end token: row 0 leaves the batch early
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        out = sample_batch(model, tok, texts, [1, 2, 3, 4], s)
    finally:
        model.generation_config.eos_token_id = old
    for o, f in zip(out, free):
        cut = f.token_ids.index(stop) if stop in f.token_ids else len(f.token_ids)
        assert o.token_ids == f.token_ids[:cut]
        assert o.finish == ("eos" if cut < 8 else "length")
    assert out[0].n_new_tokens == k and out[0].finish == "eos"


def _prompts(tok, n=7):
    return [Prompt(id=f"p{i:02d}", text=t, meta={"kind": "story", "emotion": "calm", "topic_id": i})
            for i, t in enumerate(_texts(tok, n))]


SETTINGS = SamplingSettings(max_new_tokens=6, temperature=0.9, top_p=0.95, batch_size=3)


class _Crash(Exception):
    pass


def test_resume_after_crash_mid_batch_is_exact(tiny, tmp_path):
    model, tok = tiny
    prompts = _prompts(tok)
    full = tmp_path / "full.jsonl"
    ref = generate_to_store(model, tok, prompts, full, SETTINGS, seed=5, writer="tiny", progress=False)
    assert ref.n_generated == 7 and ref.n_batches_run == 3

    crashed = tmp_path / "crashed.jsonl"

    def crash_in_second_batch(b, fresh):
        if b == 1:  # the kill lands mid-write: one whole line and half of the next reach the disk
            lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in fresh]
            with open(crashed, "a", encoding="utf-8") as f:
                f.write(lines[0] + lines[1][: len(lines[1]) // 2])
            raise _Crash

    with pytest.raises(_Crash):
        generate_to_store(model, tok, prompts, crashed, SETTINGS, seed=5, writer="tiny", progress=False,
                          _after_batch=crash_in_second_batch)
    assert not crashed.read_text().endswith("\n")  # a torn record is on disk
    rep = generate_to_store(model, tok, prompts, crashed, SETTINGS, seed=5, writer="tiny", progress=False)
    assert rep.n_done_before == 4 and rep.n_generated == 3 and rep.n_batches_run == 2
    assert crashed.read_bytes() == full.read_bytes()
    recs = JsonlStore(crashed).read()
    assert len({r["id"] for r in recs}) == len(recs) == 7
    # a third run has nothing to do
    again = generate_to_store(model, tok, prompts, crashed, SETTINGS, seed=5, writer="tiny", progress=False)
    assert again.n_generated == 0 and again.n_batches_run == 0 and len(again.records) == 7


def test_records_carry_provenance(tiny, tmp_path):
    model, tok = tiny
    prompts = _prompts(tok, 3)
    rep = generate_to_store(model, tok, prompts, tmp_path / "r.jsonl", SETTINGS, seed=1, writer="the-writer",
                            progress=False)
    r = rep.records[0]
    assert r["writer"] == "the-writer" and r["emotion"] == "calm" and r["seed"] == item_seed(1, r["id"])
    assert r["gen"]["temperature"] == 0.9 and r["gen"]["seed"] == 1 and r["finish"] in ("eos", "length")
    assert [x["id"] for x in rep.records] == ["p00", "p01", "p02"]


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    model, tok = tiny
    prompts = _prompts(tok, 2)
    path = tmp_path / "r.jsonl"
    generate_to_store(model, tok, prompts, path, SETTINGS, seed=1, writer="w", progress=False)
    with pytest.raises(ValueError, match="new run folder"):
        generate_to_store(model, tok, prompts, path, SETTINGS, seed=2, writer="w", progress=False)
    with pytest.raises(ValueError, match="new run folder"):
        generate_to_store(model, tok, prompts, path, SETTINGS, seed=1, writer="other", progress=False)


def test_plan_is_length_sorted_and_deterministic(tiny):
    _, tok = tiny
    prompts = _prompts(tok, 8)
    plan = plan_batches(prompts, tok, 3)
    lengths = [len(tok(p.text)["input_ids"]) for b in plan for p in b]
    assert lengths == sorted(lengths) and [len(b) for b in plan] == [3, 3, 2]
    assert [[p.id for p in b] for b in plan] == [[p.id for p in b] for b in plan_batches(prompts[::-1], tok, 3)]
    with pytest.raises(ValueError, match="unique"):
        plan_batches(prompts + prompts[:1], tok, 3)


def test_store_reports_a_torn_tail_and_rejects_duplicates(tmp_path):
    path = tmp_path / "s.jsonl"
    store = JsonlStore(path)
    store.append([{"id": "a", "x": 1}, {"id": "b", "x": 2}])
    with open(path, "a") as f:
        f.write('{"id": "c", "x"')
    with pytest.warns(UserWarning, match="incomplete"):
        assert [r["id"] for r in store.read()] == ["a", "b"]
    store.append([{"id": "a", "x": 3}])  # cuts the torn tail first
    assert path.read_text().count("\n") == 3
    with pytest.raises(ValueError, match="already on line 1"):
        store.read()
