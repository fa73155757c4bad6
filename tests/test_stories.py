"""Prompts, parsing, the leakage filter and the quality checks (emolib.stories); no model needed."""

from __future__ import annotations

import json

import pytest

from emolib.emotions import all_emotions, topics
from emolib.study.corpus import RECORD_FIELDS, load_corpus, write_jsonl
from emolib.study.generation import neutral_jobs, split_outputs, story_jobs, story_prompt, story_records
from emolib.study.texts import (
    distinct_n,
    emotions_named,
    guess_person,
    leaked_words,
    names_emotion,
    to_dialogue,
    word_family,
)

# ---------------------------------------------------------------- leakage


@pytest.mark.parametrize("text,emotion", [
    ("She was desperate for the rent.", "desperate"),
    ("He knocked desperately on the door.", "desperate"),
    ("In her desperation she sold the ring.", "desperate"),
    ("Madly, he ran.", "mad"),
    ("The maddening drip of the tap.", "mad"),
    ("I felt at ease with them.", "at ease"),
    ("He was ill at\nease.", "at ease"),
    ("Her worn-out boots.", "worn out"),
    ("I was worn out by noon.", "worn out"),
    ("A grief stricken widow.", "grief-stricken"),
    ("A grief-stricken widow.", "grief-stricken"),
    ("His self confidence grew.", "self-confident"),
    ("She felt self-conscious.", "self-conscious"),
    ("SADLY, the shop was shut.", "sad"),
    ("Her happiness was plain.", "happy"),
    ("I hope he calls.", "hope"),
    ("The calmness of the lake.", "calm"),
    ("Out of pure spite.", "spiteful"),
    ("She was kind to him.", "kind"),
    ("He panicked.", "panicked"),
    ("The panic rose.", "panicked"),
    ("“I’m so sorry,” she said.", "sorry"),
])
def test_leakage_catches_the_word_family(text, emotion):
    assert names_emotion(text, emotion), (text, emotion)


@pytest.mark.parametrize("text,emotion", [
    ("He made dinner and read the paper.", "mad"),
    ("The nomad camped at the edge of the desert.", "mad"),
    ("She did the sadistic crossword.", "sad"),
    ("What kind of bread is that?", "kind"),
    ("In spite of the rain we walked.", "spiteful"),
    ("The scars on his hand had faded.", "scared"),
    ("Please pass the salt.", "pleased"),
    ("A pleasant afternoon.", "pleased"),
    ("It all felt hopeless.", "hope"),
    ("The edge of the table.", "on edge"),
    ("She did it with ease.", "at ease"),
    ("A worn carpet; she went out.", "worn out"),
    ("He was conscious of the clock.", "self-conscious"),
    ("She went to sleep early.", "sleepy"),
    ("He played the piano.", "playful"),
    ("She bore the weight.", "bored"),
    ("It depends on the weather.", "dependent"),
])
def test_leakage_spares_innocent_words(text, emotion):
    assert not names_emotion(text, emotion), (text, emotion, leaked_words(text, emotion))


def test_every_emotion_has_a_family_that_catches_itself():
    for e in all_emotions():
        fam = word_family(e)
        assert fam, e
        assert names_emotion(f"The man was {e} that evening.", e), e
        assert names_emotion(f"The man was {e.upper()}.", e), e
    assert not names_emotion("A plain morning with toast and tea.", "happy")
    assert emotions_named("She was sad and then furious.", ["sad", "furious", "calm"]) == ["sad", "furious"]
    with pytest.raises(KeyError, match="Close"):
        word_family("hapy")


# ---------------------------------------------------------------- parsing

STORY = ("Maya turned the envelope over twice before opening it. Her thumb left a damp print on the paper, "
         "and she read the first line three times.")
STORY2 = ("I left the kettle on and forgot it. The window fogged, and outside the bus went past without "
          "stopping, which was fine, because I was not going anywhere.")
STORY3 = "The dog sat by the door all evening. Tom kept looking at the lead on its hook and then at the rain."


@pytest.mark.parametrize("output", [
    f"Here are three stories about the topic:\n\n1. {STORY}\n\n2. {STORY2}\n\n3. {STORY3}",
    f"{STORY}\n---\n{STORY2}\n---\n{STORY3}",
    f"Sure! Here you go.\n\n**Story 1: The Letter**\n{STORY}\n\n**Story 2: Tea**\n{STORY2}\n\n**Story 3**\n{STORY3}\n\n"
    "I hope these stories capture the feeling!",
    f"Story 1:\n{STORY}\n\n***\n\nStory 2:\n{STORY2}\n\n***\n\nStory 3:\n{STORY3}",
    f"{STORY}\n\n{STORY2}\n\n{STORY3}",
    f"### Story One\nThe Envelope\n{STORY}\n\n### Story Two\n{STORY2}\n\n### Story Three\n{STORY3}",
])
def test_split_outputs_handles_lists_separators_and_preambles(output):
    assert split_outputs(output, 3) == [STORY, STORY2, STORY3]


def test_single_story_keeps_its_paragraphs_and_loses_its_title():
    out = split_outputs(f"Title: The Envelope\n\n{STORY}\n\n{STORY3}", 1)
    assert out == [f"{STORY}\n\n{STORY3}"]
    assert split_outputs("", 3) == []


def test_to_dialogue_relabels_turns():
    text, h, a = to_dialogue("Person: How do I sort a list?\nAI: Use sorted(xs).\nIt returns a new list.\n"
                             "Person: And in place?\nAI: xs.sort().")
    assert text == ("Human: How do I sort a list?\n\nAssistant: Use sorted(xs).\nIt returns a new list.\n\n"
                    "Human: And in place?\n\nAssistant: xs.sort().")
    assert (h, a) == (2, 2)


# ---------------------------------------------------------------- records and checks

LONG = ("Nadia counted the coins on the counter twice, then a third time, her lips moving without a sound. "
        "The clerk waited. Behind her a man sighed and shifted his basket from one arm to the other. She pushed "
        "the coins forward, pulled one back, pushed it forward again. 'Is that enough for the stamps?' she asked, "
        "and her voice came out thinner than she meant it to.")


def _raw(i, output, emotion="nervous", finish="eos", n=1):
    return {"id": f"story-x-t{i:03d}-s0", "kind": "story", "emotion": emotion, "topic_id": i, "topic": topics()[i],
            "n_requested": n, "output": output, "finish": finish, "writer": "w", "seed": 7, "gen": {"t": 1}}


def test_story_records_keep_and_drop_with_reasons():
    raws = [
        _raw(0, LONG),
        _raw(1, LONG.replace("thinner", "more nervous")),
        _raw(2, LONG[:200], finish="length"),
        _raw(3, "The clerk waited by the till and looked at the clock."),
        _raw(4, LONG),  # the same story again
        _raw(5, "Le chat dort sur la chaise pendant que la pluie tombe doucement sur les toits de la ville."),
        _raw(6, "The bell rang. " * 30),
    ]
    recs = story_records(raws)
    reasons = [r["drop_reason"] for r in recs]
    assert reasons == [None, "names_emotion", "truncated", "too_short", "duplicate", "non_english", "repetitive"]
    assert [r["kept"] for r in recs] == [True] + [False] * 6
    for r in recs:
        assert set(RECORD_FIELDS) <= set(r)
        assert r["source"] == "generated" and r["writer"] == "w" and r["seed"] == 7
    assert recs[0]["id"] == "story-x-t000-s0-0" and recs[0]["prompt_id"] == "story-x-t000-s0"
    # a check that is switched off does not drop anything (the smoke profile's escape hatch)
    relaxed = story_records(raws[2:4], checks=("names_emotion", "duplicate"))
    assert all(r["kept"] for r in relaxed)


def test_truncation_only_blames_the_last_story_of_a_cut_output():
    out = f"{LONG}\n---\n{STORY} {STORY2} {STORY3}\n---\nAnd then she"
    recs = story_records([_raw(0, out, finish="length", n=3)])
    assert [r["drop_reason"] for r in recs] == [None, None, "truncated"]


def test_trim_cut_keeps_the_complete_sentences_of_a_cut_story():
    out = LONG + " Then she turned to the"
    dropped = story_records([_raw(0, out, finish="length")])
    assert dropped[0]["drop_reason"] == "truncated"
    trimmed = story_records([_raw(0, out, finish="length")], trim_cut=True)
    assert trimmed[0]["kept"] and trimmed[0]["text"] == LONG and trimmed[0]["gen"]["trimmed"] is True
    short = story_records([_raw(0, STORY + " Then she", finish="length")], trim_cut=True)
    assert short[0]["drop_reason"] == "too_short"
    assert story_records([_raw(0, "and then she went on and on without any end at all", finish="length")],
                         trim_cut=True)[0]["drop_reason"] == "truncated"


def test_neutral_records_are_relabelled_and_checked():
    good = ("Person: What is the boiling point of water at sea level?\nAI: 100 degrees Celsius at standard "
            "atmospheric pressure, which is 101.325 kilopascals.\nPerson: And at 3000 metres?\nAI: About 90 degrees "
            "Celsius, because the air pressure there is roughly 70 kilopascals, and water boils when its vapour "
            "pressure equals the pressure of the surrounding air.")
    raws = [{"id": "neutral-0000", "kind": "neutral", "emotion": None, "topic_id": None, "topic": "boiling",
             "n_requested": 2, "finish": "eos", "writer": "w", "seed": 1, "gen": None,
             "output": good + "\n---\n" + good.replace("What is", "Thanks! What is")}]
    recs = story_records(raws, min_tokens=20)
    assert recs[0]["kept"] and recs[0]["text"].startswith("Human: What is") and "\n\nAssistant: 100" in recs[0]["text"]
    assert recs[1]["drop_reason"] == "emotional"


def test_jobs_are_deterministic_and_spread_topics():
    jobs = story_jobs(["happy", "at ease"], n_topics=5, n_stories=1, seed=0)
    assert jobs == story_jobs(["happy", "at ease"], n_topics=5, n_stories=1, seed=0)
    assert len({j["prompt_id"] for j in jobs}) == 10
    for e in ("happy", "at ease"):
        tids = [j["topic_id"] for j in jobs if j["emotion"] == e]
        assert len(set(tids)) == 5
    assert {j["person_requested"] for j in jobs} == {"first", "third"}
    assert "HAPPY" in jobs[0]["prompt"] and jobs[0]["topic"] in jobs[0]["prompt"]
    assert "3 different short stories" in story_prompt("calm", "A walk", 3)
    n = neutral_jobs(30, 2, seed=0)
    assert len({j["topic"] for j in n}) == 30 and {j["task_type"] for j in n} >= {"coding", "facts", "how-to"}


def test_person_and_diversity_helpers():
    assert guess_person(STORY2) == "first"
    assert guess_person('Maya said, "I know, I know my lines."') == "third"
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
    assert distinct_n(["a b", "a b"], 2) == 0.5


def test_load_corpus_from_a_run_folder(tmp_path):
    recs = story_records([_raw(0, LONG), _raw(1, LONG.replace("thinner", "more nervous"))])
    write_jsonl(tmp_path / "stories" / "stories.jsonl", recs)
    assert [r["id"] for r in load_corpus(tmp_path)] == ["story-x-t000-s0-0"]
    assert len(load_corpus(tmp_path, kept_only=False)) == 2
    assert len(load_corpus(tmp_path / "stories" / "stories.jsonl")) == 1
    with pytest.raises(FileNotFoundError, match="01_generate_stories"):
        load_corpus(tmp_path, kind="neutral")
    with pytest.raises(ValueError, match="kind"):
        load_corpus(tmp_path, kind="stories")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "a", "kind": "story"}) + "\n")
    with pytest.raises(ValueError, match="lacks fields"):
        load_corpus(tmp_path / "bad.jsonl")
