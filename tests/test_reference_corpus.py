"""The reference corpus v2 as package data (issue 16): its size, its crossed design and its gates.

Asserted here, over the files in ``emolib/data/reference/``:

* at least 30 stories for each of the 171 emotions and at least 300 neutral dialogues;
* the crossed design: topics from the shared list, never twice for one emotion, used about equally
  often overall and within each of the paper's clusters, so that a permutation test finds topic no
  better than chance at predicting an emotion's cluster; voices recorded per story, every emotion
  over at least five of the written voice cards;
* every gate of :func:`emolib.study.corpus.check_stories` (leakage with synonyms, 60-250 words, no
  shared sentence, no shared 8-gram, tf-idf <= 0.30 across emotions, content distinct-2 >= 0.85);
* the neutral dialogues' own checks, and the blind readers' guesses kept as data.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from emolib.emotions import all_emotions, topics
from emolib.study.corpus import (
    MIN_VOICES_PER_EMOTION,
    RECORD_FIELDS,
    assign_slots,
    balance_table,
    blind_check,
    check_stories,
    cluster_of,
    corpus_files,
    load_corpus,
    topic_predicts_cluster,
    voices,
)
from emolib.study.texts import check_text

MIN_STORIES = 30
MIN_NEUTRAL = 300


@pytest.fixture(scope="module")
def stories():
    return load_corpus("reference", kind="story", kept_only=False)


@pytest.fixture(scope="module")
def neutral():
    return load_corpus("reference", kind="neutral", kept_only=False)


def test_loader_reads_the_story_files_and_the_neutral_file():
    files = corpus_files("reference", "story")
    assert files and all(re.fullmatch(r"stories_[a-z0-9]+\.jsonl", f.name) for f in files)
    assert {f.stem.removeprefix("stories_") for f in files} <= set(voices())
    assert [f.name for f in corpus_files("reference", "neutral")] == ["neutral.jsonl"]


def test_records_have_the_record_format_and_unique_ids(stories, neutral):
    for r in stories + neutral:
        assert set(RECORD_FIELDS) <= set(r), r["id"]
        assert r["source"] == "reference" and r["kept"] is True and r["drop_reason"] is None
    for r in stories:
        assert r["voice"] in voices(), r["id"]
        assert r["person"] in ("first", "second", "third"), r["id"]
    ids = [r["id"] for r in stories + neutral]
    assert len(ids) == len(set(ids))


def test_every_emotion_has_30_stories_on_distinct_topics(stories):
    by_e = defaultdict(list)
    for r in stories:
        by_e[r["emotion"]].append(r)
    assert set(by_e) == set(all_emotions())
    short = {e: len(v) for e, v in by_e.items() if len(v) < MIN_STORIES}
    assert not short, f"fewer than {MIN_STORIES} stories: {short}"
    all_topics = topics()
    for e, rs in by_e.items():
        tids = [r["topic_id"] for r in rs]
        assert len(set(tids)) == len(tids), f"{e}: topics repeat {Counter(tids).most_common(2)}"
        assert all(0 <= t < len(all_topics) and r["topic"] == all_topics[t] for t, r in zip(tids, rs))


def test_topics_are_balanced_overall_and_within_clusters(stories):
    b = balance_table(stories)
    overall = [b["topic_counts"].get(t, 0) for t in range(len(topics()))]
    assert max(overall) - min(overall) <= 4, (min(overall), max(overall))
    for cluster, counts in b["topic_counts_by_cluster"].items():
        per = [counts.get(t, 0) for t in range(len(topics()))]
        # the balanced draw keeps every topic within a few uses of the others inside each cluster
        assert max(per) - min(per) <= 3, (cluster, min(per), max(per))


def test_topic_does_not_predict_the_cluster(stories):
    res = topic_predicts_cluster(stories, n_perm=200, seed=0)
    assert res["p"] > 0.05, res  # at chance (the balanced design puts it below chance)
    assert res["purity"] <= res["null_p95"]


def test_voices_spread_every_emotion(stories):
    cards = voices()
    assert len(cards) >= 7 and all(len(c["card"]) > 200 for v, c in cards.items() if v != "v1")
    per = defaultdict(set)
    for r in stories:
        per[r["emotion"]].add(r["voice"])
    thin = {e: len(v) for e, v in per.items() if len(v) < MIN_VOICES_PER_EMOTION}
    assert not thin, thin
    persons = Counter(r["person"] for r in stories)
    assert all(persons[p] > 400 for p in ("first", "second", "third"))


def test_every_gate_passes(stories):
    rep = check_stories(stories)
    assert rep.ok, "\n".join(rep.lines(limit=10))


def test_gates_catch_planted_faults():
    """check_stories is not vacuous: each gate fires on a planted fault."""
    base = ("The bus sat in the lay-by with its hazard lights ticking while the driver walked around it twice, "
            "kicked a tyre, and came back up the steps wiping his hands on a rag that had seen better years.")
    other = ("Nadia counted the envelopes again on the kitchen table, then put them back in the biscuit tin and "
             "pressed the lid down until it clicked, the radio murmuring about rain coming in from the west. Her "
             "brother would ring at six, as he did every Thursday, and ask whether the boiler man had come. He had "
             "not. She wrote the date on the last envelope in pencil and set the tin beside the bread bin.")
    recs = [{"id": "a", "emotion": "calm", "text": base + " She felt calm."},  # names its emotion
            {"id": "b", "emotion": "sad", "text": "Too short to count."},
            {"id": "c", "emotion": "angry", "text": base},  # rewrite of a's story for another emotion
            {"id": "d", "emotion": "happy", "text": other}]
    counts = check_stories(recs, per_emotion_floor=False).counts()
    assert {"leakage", "length", "shared_sentence", "shared_8gram", "tfidf"} <= set(counts)
    assert check_stories([recs[3]], per_emotion_floor=False).ok


def test_balanced_assignment_is_balanced_and_seeded():
    emos = ["happy", "joyful", "calm", "sad", "afraid", "angry", "proud", "bored"]
    a = assign_slots({e: 10 for e in emos}, ["x", "y", "z"], seed=3)
    b = assign_slots({e: 10 for e in emos}, ["x", "y", "z"], seed=3)
    assert [s.__dict__ for s in a] == [s.__dict__ for s in b]
    per_e = defaultdict(list)
    for s in a:
        per_e[s.emotion].append(s)
    for ss in per_e.values():
        assert len({s.topic_id for s in ss}) == 10
        assert max(Counter(s.voice for s in ss).values()) - min(Counter(s.voice for s in ss).values()) <= 1
    used = Counter(s.topic_id for s in a)
    assert max(used.values()) - min(used.values()) <= 2
    clusters = cluster_of()
    assert all(e in clusters for e in emos)


def test_neutral_dialogues(neutral):
    assert len(neutral) >= MIN_NEUTRAL, f"{len(neutral)} neutral dialogues, want >= {MIN_NEUTRAL}"
    assert Counter(r["task_type"] for r in neutral).keys() >= {"coding", "facts", "work", "howto", "creative"}
    for r in neutral:
        assert r["emotion"] is None and r["kind"] == "neutral"
        text = r["text"]
        human = len(re.findall(r"(?m)^Human:", text))
        assistant = len(re.findall(r"(?m)^Assistant:", text))
        assert 2 <= human <= 6 and assistant == human, (r["id"], human, assistant)
        why = check_text(text, "neutral", None, hit_length_limit=False, n_tokens=10**6, min_tokens=0, seen={},
                         checks=("empty", "non_english", "not_a_dialogue", "emotional"))
        assert why is None, (r["id"], why)


def test_blind_check_is_kept_as_data(stories):
    res = blind_check()
    ids = {r["id"] for r in stories}
    assert res["n"] >= 200 and all(g["id"] in ids for g in res["guesses"])
    first = [g for g in res["guesses"] if g.get("round", 1) == 1]
    assert res["n"] == len(first)
    assert res["n"] * res["top1"] == pytest.approx(sum(g["top3"][0] == g["emotion"] for g in first))
    assert res["top1"] <= res["top3"] and 0 <= res["same_cluster"] <= 1
    # every rewritten story was read again, and the shipped corpus is judged by its latest texts
    assert res["rewritten"] and all(any(g["id"] == i and g["round"] == 2 for g in res["guesses"]) for i in res["rewritten"])
    assert res["current"]["n"] == len({g["id"] for g in res["guesses"]})
