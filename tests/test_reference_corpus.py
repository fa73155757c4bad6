"""Quality gates for the hand-written reference corpus (emolib/data/reference/, issue 9).

These assert the corpus's final requirements: 171 emotions x at least 6 stories, each on a different
topic from our list and 60..150 words long, first and third person mixed, the leakage filter passing
every story, no sentence of five or more words shared by two stories, lexical diversity (distinct-2)
per emotion at or above DISTINCT2_FLOOR, and at least 100 neutral Human/Assistant dialogues of 2-6
exchanges that pass the neutral checks. Draft files (chunk*.jsonl) are never read.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from emolib.emotions import all_emotions, topics
from emolib.study.corpus import RECORD_FIELDS, REFERENCE_WRITER, corpus_files, load_corpus
from emolib.study.texts import check_text, distinct_n, leaked_words, sentences, words

MIN_STORIES = 6
MIN_NEUTRAL = 100
WORDS_RANGE = (60, 150)
# Distinct-2 over one emotion's stories (unique word bigrams / all bigrams). Six careful 100-word
# stories score about 0.88-0.96; a writer that reuses its phrasing (or one story copied with small
# edits) falls well below 0.8.
DISTINCT2_FLOOR = 0.85
SHARED_SENTENCE_MIN_WORDS = 5  # shorter sentences ("He didn't move.") may recur naturally


@pytest.fixture(scope="module")
def stories():
    return load_corpus("reference", kind="story", kept_only=False)


@pytest.fixture(scope="module")
def neutral():
    return load_corpus("reference", kind="neutral", kept_only=False)


def test_loader_reads_only_the_final_parts():
    files = corpus_files("reference", "story")
    assert files and all(re.fullmatch(r"stories_part\d+\.jsonl", f.name) for f in files)
    assert [f.name for f in corpus_files("reference", "neutral")] == ["neutral.jsonl"]


def test_records_have_the_generated_record_format(stories, neutral):
    for r in stories + neutral:
        assert set(RECORD_FIELDS) <= set(r), r["id"]
        assert r["source"] == "reference" and r["writer"] == REFERENCE_WRITER, r["id"]
        assert r["kept"] is True and r["drop_reason"] is None
    ids = [r["id"] for r in stories + neutral]
    assert len(ids) == len(set(ids))


def test_every_emotion_has_its_stories_on_distinct_topics(stories):
    by_e = defaultdict(list)
    for r in stories:
        by_e[r["emotion"]].append(r)
    unknown = sorted(set(by_e) - set(all_emotions()))
    assert not unknown, f"not among the 171: {unknown}"
    short = {e: len(by_e[e]) for e in all_emotions() if len(by_e[e]) < MIN_STORIES}
    assert not short, f"{len(short)} emotions have fewer than {MIN_STORIES} stories: {short}"
    all_topics = topics()
    for e, rs in by_e.items():
        tids = [r["topic_id"] for r in rs]
        assert len(set(tids)) == len(tids), f"{e}: topics repeat {Counter(tids).most_common(2)}"
        for r in rs:
            assert 0 <= r["topic_id"] < len(all_topics) and r["topic"] == all_topics[r["topic_id"]], r["id"]


def test_first_and_third_person_are_mixed(stories):
    by_e = defaultdict(Counter)
    for r in stories:
        assert r["person"] in ("first", "third"), r["id"]
        by_e[r["emotion"]][r["person"]] += 1
    one_sided = sorted(e for e, c in by_e.items() if len(c) < 2)
    assert not one_sided, f"only one narration person in: {one_sided}"


def test_leakage_filter_passes_every_story(stories):
    leaks = {r["id"]: leaked_words(r["text"], r["emotion"]) for r in stories}
    leaks = {k: v for k, v in leaks.items() if v}
    assert not leaks, f"{len(leaks)} stories name their emotion: {dict(list(leaks.items())[:20])}"


def test_word_counts_in_range(stories):
    lo, hi = WORDS_RANGE
    bad = {r["id"]: len(words(r["text"])) for r in stories if not lo <= len(words(r["text"])) <= hi}
    assert not bad, f"outside {lo}..{hi} words: {bad}"


def test_no_two_stories_share_a_sentence(stories):
    owners = defaultdict(set)
    for r in stories:
        for s in sentences(r["text"]):
            key = " ".join(w.lower() for w in words(s))
            if len(key.split()) >= SHARED_SENTENCE_MIN_WORDS:
                owners[key].add(r["id"])
    shared = {s: sorted(ids) for s, ids in owners.items() if len(ids) > 1}
    assert not shared, f"{len(shared)} sentences appear in more than one story: {shared}"


def test_distinct2_per_emotion_above_floor(stories):
    by_e = defaultdict(list)
    for r in stories:
        by_e[r["emotion"]].append(r["text"])
    low = {e: round(distinct_n(t, 2), 3) for e, t in by_e.items() if distinct_n(t, 2) < DISTINCT2_FLOOR}
    assert not low, f"distinct-2 below {DISTINCT2_FLOOR}: {low}"


def test_stories_pass_the_generated_corpus_checks(stories):
    """The same checks the generated stories go through (except the token-length one, which
    depends on the subject model's tokenizer, and the duplicate one, covered above)."""
    checks = ("empty", "non_english", "names_emotion", "truncated", "repetitive")
    bad = {}
    for r in stories:
        why = check_text(r["text"], "story", r["emotion"], hit_length_limit=False, n_tokens=10**6, min_tokens=0,
                         seen={}, checks=checks)
        if why:
            bad[r["id"]] = why
    assert not bad, bad


def test_neutral_dialogues(neutral):
    assert len(neutral) >= MIN_NEUTRAL, f"{len(neutral)} neutral dialogues, want >= {MIN_NEUTRAL}"
    assert len(Counter(r["task_type"] for r in neutral)) >= 4  # coding, facts, work, how-to, creative
    for r in neutral:
        assert r["emotion"] is None and r["kind"] == "neutral"
        text = r["text"]
        human = len(re.findall(r"(?m)^Human:", text))
        assistant = len(re.findall(r"(?m)^Assistant:", text))
        assert 2 <= human <= 6 and assistant == human, (r["id"], human, assistant)
        why = check_text(text, "neutral", None, hit_length_limit=False, n_tokens=10**6, min_tokens=0, seen={},
                         checks=("empty", "non_english", "not_a_dialogue", "emotional"))
        assert why is None, (r["id"], why)
