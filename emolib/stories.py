"""Story and neutral-dialogue prompts, parsing, the leakage and quality filters, and the corpus on disk.

The paper trains its probes on short stories in which a character feels an emotion that is never
named, and removes "style" directions with emotionally neutral Human/Assistant dialogues. This
module turns a model's raw outputs (see :mod:`emolib.generation`) into such a corpus:

* :func:`story_prompt` / :func:`neutral_prompt`: our own wording of the paper's two prompts;
* :func:`split_outputs` cuts a multi-story output into stories (numbered lists, ``---`` separators,
  "Story 2:" headers, titles, "Here are five stories..." preambles and closing remarks);
* :func:`names_emotion` is the leakage filter: the emotion word and its own word family
  (inflections and derivations: *desperate, desperately, desperation*), matched on letter
  boundaries so that *mad* never drops *made*; multi-word (*at ease*, *worn out*) and hyphenated
  (*grief-stricken*, *self-confident*) items are matched across spaces and hyphens;
* :func:`story_records` applies every check and keeps the dropped stories with their reason, so the
  notebook can show what the filter did per emotion;
* :func:`load_corpus` reads a run folder's corpus or the hand-written reference corpus shipped in
  ``emolib/data/reference/`` (same record format).

Record fields (one JSON object per line): ``id, kind ("story"|"neutral"), emotion (None for neutral),
topic_id, topic, person ("first"|"third"|None), text, writer, source ("generated"|"reference"),
prompt_id, seed, gen, kept, drop_reason``.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .emotions import all_emotions, check_emotions, topics

RECORD_FIELDS = ("id", "kind", "emotion", "topic_id", "topic", "person", "text", "writer", "source",
                 "prompt_id", "seed", "gen", "kept", "drop_reason")
REFERENCE_WRITER = "emolib-authors (hand-written reference corpus)"

# --------------------------------------------------------------------------------------------
# Prompts (our own wording of the paper's protocol)
# --------------------------------------------------------------------------------------------

_STORY_MANY = """Write {n} different short stories on the topic below. Each story is one paragraph of about 80 to 150 words and follows a character who is feeling {emotion}.

Topic: {topic}

Rules:
- Every story is a fresh start: a new character and a new situation, with no link to the other stories.
- Vary the wording, and mix first-person ("I") and third-person ("she", "he", "they") narration.
- NEVER WRITE THE WORD "{emotion_upper}" OR ANY WORD THAT MEANS THE SAME. The reader must understand the feeling only from what the character does, how their body reacts, what they say and how they say it, what they think, and the place and situation around them.
- Separate the stories with a line containing only ---
- Write only the stories: no titles, no introduction, no comments."""

_STORY_ONE = """Write a short story on the topic below: one paragraph of about 80 to 150 words about a character who is feeling {emotion}.

Topic: {topic}

Tell it in the {person} person. NEVER WRITE THE WORD "{emotion_upper}" OR ANY WORD THAT MEANS THE SAME. The reader must understand the feeling only from what the character does, how their body reacts, what they say, what they think, and the place around them. Write only the story, with no title and no comments."""

_NEUTRAL = """Write {n} separate conversations between Person (a human) and AI (an AI assistant) about this {task_type} request: {task}

- In each conversation Person asks a question or asks for help, and AI answers. Use 2 to 6 exchanges.
- Start every turn on a new line with "Person:" or "AI:".
- Both speakers stay strictly factual and neutral: no feelings, no opinions about the request, no praise, no greetings, no thanks, no apologies, no phrases such as "happy to help" or "great question".
- Separate the conversations with a line containing only ---
- Write only the conversations."""


def story_prompt(emotion: str, topic: str, n_stories: int = 1, person: str = "third") -> str:
    """The user message asking for ``n_stories`` stories about ``emotion`` on ``topic``.

    With one story per call (what a small writer manages best) the narration ``person`` is set by
    the caller, so that the corpus still mixes first- and third-person stories.
    """
    if n_stories <= 1:
        return _STORY_ONE.format(emotion=emotion, emotion_upper=emotion.upper(), topic=topic, person=person)
    return _STORY_MANY.format(n=n_stories, emotion=emotion, emotion_upper=emotion.upper(), topic=topic)


def neutral_prompt(task: str, task_type: str, n_dialogues: int = 1) -> str:
    """The user message asking for emotionally neutral Person/AI dialogues about one task."""
    return _NEUTRAL.format(n=n_dialogues, task=task, task_type=task_type)


def chat_text(tokenizer, message: str) -> str:
    """``message`` as a user turn through the model's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Human: {message}\n\nAssistant:"


@cache
def neutral_tasks() -> tuple[dict[str, str], ...]:
    """Our neutral-dialogue requests (coding, facts, work, how-to, neutral creative), our own wording."""
    doc = json.loads(resources.files("emolib.data").joinpath("neutral_tasks.json").read_text(encoding="utf-8"))
    return tuple({"task_type": t, "task": task} for t, tasks in doc["tasks"].items() for task in tasks)


def slug(word: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", word.lower()).strip("-")


def story_jobs(emotions: Sequence[str], n_topics: int, n_stories: int, seed: int,
               samples_per_topic: int = 1) -> list[dict[str, Any]]:
    """One job per (emotion, topic, sample): the prompt's metadata, before any model is involved.

    Each emotion gets ``n_topics`` topics drawn without replacement from the 100 (a seeded draw per
    emotion, so topics are spread across the corpus; ``n_topics=100`` is the paper's full list).
    Single-story prompts alternate first and third person.
    """
    check_emotions(emotions)
    all_topics = topics()
    if not 1 <= n_topics <= len(all_topics):
        raise ValueError(f"n_topics must be in 1..{len(all_topics)}, got {n_topics}")
    jobs = []
    for e in emotions:
        rng = random.Random(f"{seed}:{e}")
        tids = rng.sample(range(len(all_topics)), n_topics)
        for j, tid in enumerate(tids):
            for s in range(samples_per_topic):
                person = "first" if (j + s + rng.randrange(2)) % 2 else "third"
                pid = f"story-{slug(e)}-t{tid:03d}-s{s}"
                jobs.append({"prompt_id": pid, "kind": "story", "emotion": e, "topic_id": tid,
                             "topic": all_topics[tid], "n_requested": n_stories,
                             "person_requested": person if n_stories <= 1 else None,
                             "prompt": story_prompt(e, all_topics[tid], n_stories, person)})
    return jobs


def neutral_jobs(n_prompts: int, n_dialogues: int, seed: int) -> list[dict[str, Any]]:
    """``n_prompts`` neutral-dialogue jobs, cycling over the task list in a seeded order."""
    tasks = list(neutral_tasks())
    random.Random(f"{seed}:neutral").shuffle(tasks)
    jobs = []
    for i in range(n_prompts):
        t = tasks[i % len(tasks)]
        jobs.append({"prompt_id": f"neutral-{i:04d}", "kind": "neutral", "emotion": None, "topic_id": None,
                     "topic": t["task"], "task_type": t["task_type"], "n_requested": n_dialogues,
                     "prompt": neutral_prompt(t["task"], t["task_type"], n_dialogues)})
    return jobs


def make_prompts(tokenizer, jobs: Iterable[dict[str, Any]]):
    """Jobs -> :class:`emolib.generation.Prompt` objects (the chat template applied)."""
    from .generation import Prompt

    return [Prompt(id=j["prompt_id"], text=chat_text(tokenizer, j["prompt"]), meta=dict(j)) for j in jobs]


# --------------------------------------------------------------------------------------------
# Parsing multi-story outputs
# --------------------------------------------------------------------------------------------

_SEPARATOR = re.compile(r"^\s*(?:[-*_=~#]\s*){3,}\s*$")
_HEADER = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:(?:story|dialogue|conversation|scenario|example)\s*(?:#\s*)?"
    r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|eleven)\b|\d{1,2}\s*[.):]|\(\d{1,2}\))"
    r"\s*(?:\*\*|__)?\s*[:.\-–—]?\s*(?:\*\*|__)?", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|here\b|below\b|these\b|the following\b|i(?:'ve| have)"
    r" written)", re.IGNORECASE)
_POSTAMBLE = re.compile(
    r"^\s*(?:i hope|hope you|these (?:stories|dialogues|conversations)|each (?:story|dialogue|conversation)|"
    r"note:|in (?:each|all|these) (?:of )?(?:these |the )?(?:stories|dialogues)|let me know|feel free)",
    re.IGNORECASE)
_TITLE = re.compile(r"^\s*(?:title\s*:.*|(?:\*\*|__|#+).{1,80}?(?:\*\*|__)?\s*|[^.!?\"“”]{1,60})\s*$", re.IGNORECASE)


def _clean_piece(text: str) -> str:
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    # a short first line without sentence punctuation is a title
    while len(lines) > 1 and _TITLE.match(lines[0]) and len(lines[0].split()) <= 10:
        lines = lines[1:]
    text = "\n".join(lines).strip()
    text = re.sub(r"(\*\*|__)", "", text)
    return text.strip().strip("\"").strip() if text.count('"') == 2 and text.startswith('"') and text.endswith('"') else text.strip()


def split_outputs(output: str, n_requested: int = 1) -> list[str]:
    """Cut one model output into its stories (or dialogues).

    Handles ``---``/``***`` separator lines, "Story 2:" / "**Story 2**" / "2." headers, a
    preamble paragraph ("Here are five stories...", "Sure!"), a closing remark ("I hope these
    stories..."), and titles. With ``n_requested > 1`` and no marker at all, blank-line paragraphs
    are taken as separate stories (the prompt asks for one paragraph each).
    """
    text = output.replace("\r\n", "\n").strip()
    if not text:
        return []
    paras = re.split(r"\n\s*\n", text)
    # a preamble is a short first paragraph that introduces the rest
    if len(paras) > 1 and (_PREAMBLE.match(paras[0]) or paras[0].rstrip().endswith(":")) and len(paras[0].split()) <= 40:
        paras = paras[1:]
    while len(paras) > 1 and _POSTAMBLE.match(paras[-1]):
        paras = paras[:-1]
    lines = "\n\n".join(paras).splitlines()
    pieces: list[list[str]] = [[]]
    marked = False
    for line in lines:
        if _SEPARATOR.match(line):
            pieces.append([])
            marked = True
            continue
        m = _HEADER.match(line)
        if m and (m.end() == len(line) or len(line) - m.end() > 0):
            rest = line[m.end():].strip()
            if pieces[-1] and any(s.strip() for s in pieces[-1]):
                pieces.append([])
            marked = True
            if rest:
                pieces[-1].append(rest)
            continue
        pieces[-1].append(line)
    out = [_clean_piece("\n".join(p)) for p in pieces]
    out = [p for p in out if p and not _POSTAMBLE.match(p)]
    if not marked and n_requested > 1 and len(out) == 1:
        out = [_clean_piece(p) for p in re.split(r"\n\s*\n", out[0]) if p.strip()]
    return out


# --------------------------------------------------------------------------------------------
# Leakage: the emotion word and its own word family
# --------------------------------------------------------------------------------------------

# Written by hand for the 171 words: inflections and derivations that carry the emotion word's stem.
# Deliberately left out (documented choices): direct synonyms (many are other target emotions),
# negations (un-/-less forms name a different state: "hopeless", "impatient"), and stem words whose
# everyday sense is not the emotion: "bore" (past of bear), "please", "play", "sleep", "tire",
# "depend(s)", "energy", "thank(s)" (an action, not the feeling's name), "shake/shook/shaking".
# "kind of" and "in spite of" are not matches.
_FAMILIES: dict[str, str] = {
    "afraid": "afraid",
    "alarmed": "alarm alarms alarmed alarming alarmingly",
    "alert": "alert alerts alerted alerting alertly alertness",
    "amazed": "amaze amazes amazed amazing amazingly amazement",
    "amused": "amuse amuses amused amusing amusingly amusement",
    "angry": "angry angrily angrier angriest anger angers angered angering",
    "annoyed": "annoy annoys annoyed annoying annoyingly annoyance",
    "anxious": "anxious anxiously anxiousness anxiety anxieties",
    "aroused": "arouse arouses aroused arousing arousal",
    "ashamed": "ashamed shame shames shamed shameful shamefully",
    "astonished": "astonish astonishes astonished astonishing astonishingly astonishment",
    "at ease": "at_ease",
    "awestruck": "awestruck awe-struck awe awed",
    "bewildered": "bewilder bewilders bewildered bewildering bewilderingly bewilderment",
    "bitter": "bitter bitterly bitterness bitterer bitterest",
    "blissful": "bliss blissful blissfully blissfulness",
    "bored": "bored boring boringly boredom bores",
    "brooding": "brood broods brooded brooding broodingly broody",
    "calm": "calm calms calmed calming calmly calmness calmer calmest",
    "cheerful": "cheer cheers cheered cheering cheerful cheerfully cheerfulness cheery cheerily",
    "compassionate": "compassion compassionate compassionately",
    "contemptuous": "contempt contemptuous contemptuously",
    "content": "content contented contentedly contentment",
    "defiant": "defy defies defied defying defiant defiantly defiance",
    "delighted": "delight delights delighted delighting delightful delightfully",
    "dependent": "dependent dependently dependence dependency dependant",
    "depressed": "depress depresses depressed depressing depressingly depression",
    "desperate": "desperate desperately desperation desperateness",
    "disdainful": "disdain disdains disdained disdainful disdainfully",
    "disgusted": "disgust disgusts disgusted disgusting disgustingly",
    "disoriented": "disorient disorients disoriented disorienting disorientation disorientated disorientating",
    "dispirited": "dispirit dispirited dispiriting dispiritedly",
    "distressed": "distress distresses distressed distressing distressingly",
    "disturbed": "disturb disturbs disturbed disturbing disturbingly disturbance",
    "docile": "docile docilely docility",
    "droopy": "droop droops drooped drooping droopy droopily droopiness",
    "dumbstruck": "dumbstruck dumb-struck",
    "eager": "eager eagerly eagerness",
    "ecstatic": "ecstatic ecstatically ecstasy ecstasies",
    "elated": "elate elated elation",
    "embarrassed": "embarrass embarrasses embarrassed embarrassing embarrassingly embarrassment",
    "empathetic": "empathy empathetic empathetically empathic empathise empathize empathised empathized",
    "energized": "energize energizes energized energizing energise energises energised energising energetic energetically",
    "enraged": "enrage enrages enraged enraging rage rages raged raging",
    "enthusiastic": "enthusiasm enthusiastic enthusiastically enthuse enthused enthusing",
    "envious": "envy envies envied envious enviously",
    "euphoric": "euphoria euphoric euphorically",
    "exasperated": "exasperate exasperates exasperated exasperating exasperatingly exasperation",
    "excited": "excite excites excited exciting excitedly excitement",
    "exuberant": "exuberant exuberantly exuberance",
    "frightened": "fright frighten frightens frightened frightening frighteningly",
    "frustrated": "frustrate frustrates frustrated frustrating frustratingly frustration",
    "fulfilled": "fulfil fulfill fulfils fulfills fulfilled fulfilling fulfilment fulfillment",
    "furious": "furious furiously fury",
    "gloomy": "gloom gloomy gloomily gloominess gloomier",
    "grateful": "grateful gratefully gratefulness gratitude",
    "greedy": "greed greedy greedily greediness greedier",
    "grief-stricken": "grief-stricken grief",
    "grumpy": "grump grumpy grumpily grumpiness grumpier",
    "guilty": "guilt guilty guiltily guiltier",
    "happy": "happy happily happiness happier happiest",
    "hateful": "hate hates hated hating hateful hatefully hatred",
    "heartbroken": "heartbroken heart-broken heartbreak heartbreaking heartbreakingly broken-hearted",
    "hope": "hope hopes hoped hoping hopeful hopefully hopefulness",
    "hopeful": "hope hopes hoped hoping hopeful hopefully hopefulness",
    "horrified": "horrify horrifies horrified horrifying horrifyingly horror horrors",
    "hostile": "hostile hostilely hostility hostilities",
    "humiliated": "humiliate humiliates humiliated humiliating humiliatingly humiliation",
    "hurt": "hurt hurts hurting hurtful hurtfully",
    "hysterical": "hysteria hysterical hysterically hysterics",
    "impatient": "impatient impatiently impatience",
    "indifferent": "indifferent indifferently indifference",
    "indignant": "indignant indignantly indignation",
    "infatuated": "infatuate infatuated infatuation",
    "inspired": "inspire inspires inspired inspiring inspiringly inspiration inspirational",
    "insulted": "insult insults insulted insulting insultingly",
    "invigorated": "invigorate invigorates invigorated invigorating invigoration",
    "irate": "irate irately",
    "irritated": "irritate irritates irritated irritating irritatingly irritation irritable irritably irritability",
    "jealous": "jealous jealously jealousy jealousies",
    "joyful": "joy joys joyful joyfully joyfulness joyous joyously",
    "jubilant": "jubilant jubilantly jubilation",
    "kind": "kind kindly kindness kinder kindest kindhearted kind-hearted",
    "lazy": "lazy lazily laziness lazier laziest laze lazed lazing",
    "listless": "listless listlessly listlessness",
    "lonely": "lonely loneliness lonelier loneliest",
    "loving": "love loves loved loving lovingly",
    "mad": "mad madly madness madder maddest madden maddens maddened maddening maddeningly",
    "melancholy": "melancholy melancholic melancholia",
    "miserable": "misery miserable miserably miseries",
    "mortified": "mortify mortifies mortified mortifying mortifyingly mortification",
    "mystified": "mystify mystifies mystified mystifying mystification",
    "nervous": "nervous nervously nervousness",
    "nostalgic": "nostalgia nostalgic nostalgically",
    "obstinate": "obstinate obstinately obstinacy",
    "offended": "offend offends offended offending offence offense",
    "on edge": "on_edge",
    "optimistic": "optimism optimist optimists optimistic optimistically",
    "outraged": "outrage outrages outraged outrageous outrageously",
    "overwhelmed": "overwhelm overwhelms overwhelmed overwhelming overwhelmingly",
    "panicked": "panic panics panicked panicking panicky",
    "paranoid": "paranoid paranoia paranoiac",
    "patient": "patient patiently patience",
    "peaceful": "peace peaceful peacefully peacefulness",
    "perplexed": "perplex perplexes perplexed perplexing perplexity",
    "playful": "playful playfully playfulness",
    "pleased": "pleased pleasing pleasingly pleasure",
    "proud": "proud proudly pride prided",
    "puzzled": "puzzle puzzles puzzled puzzling puzzlingly puzzlement",
    "rattled": "rattle rattles rattled rattling",
    "reflective": "reflect reflects reflected reflecting reflection reflections reflective reflectively",
    "refreshed": "refresh refreshes refreshed refreshing refreshingly refreshment",
    "regretful": "regret regrets regretted regretting regretful regretfully regrettable regrettably",
    "rejuvenated": "rejuvenate rejuvenates rejuvenated rejuvenating rejuvenation",
    "relaxed": "relax relaxes relaxed relaxing relaxation",
    "relieved": "relieve relieves relieved relieving relief",
    "remorseful": "remorse remorseful remorsefully",
    "resentful": "resent resents resented resenting resentful resentfully resentment",
    "resigned": "resign resigns resigned resigning resignation resignedly",
    "restless": "restless restlessly restlessness",
    "sad": "sad sadly sadness sadder saddest sadden saddens saddened saddening",
    "safe": "safe safely safety safer safest",
    "satisfied": "satisfy satisfies satisfied satisfying satisfyingly satisfaction satisfactory",
    "scared": "scare scares scared scaring scary scarily",
    "scornful": "scorn scorns scorned scornful scornfully",
    "self-confident": "self-confident self-confidence self-confidently",
    "self-conscious": "self-conscious self-consciously self-consciousness",
    "self-critical": "self-critical self-critically self-criticism",
    "sensitive": "sensitive sensitively sensitivity sensitivities",
    "sentimental": "sentiment sentiments sentimental sentimentally sentimentality",
    "serene": "serene serenely serenity",
    "shaken": "shaken shaky shakily shakiness",
    "shocked": "shock shocks shocked shocking shockingly",
    "skeptical": "skeptic skeptics skeptical skeptically skepticism sceptic sceptics sceptical sceptically scepticism",
    "sleepy": "sleepy sleepily sleepiness sleepier",
    "sluggish": "sluggish sluggishly sluggishness",
    "smug": "smug smugly smugness",
    "sorry": "sorry sorrier sorriest",
    "spiteful": "spite spited spiteful spitefully spitefulness",
    "stimulated": "stimulate stimulates stimulated stimulating stimulation",
    "stressed": "stress stresses stressed stressing stressful",
    "stubborn": "stubborn stubbornly stubbornness",
    "stuck": "stuck",
    "sullen": "sullen sullenly sullenness",
    "surprised": "surprise surprises surprised surprising surprisingly",
    "suspicious": "suspicious suspiciously suspicion suspicions",
    "sympathetic": "sympathy sympathies sympathetic sympathetically sympathise sympathize sympathised sympathized",
    "tense": "tense tensed tensely tension tensions tenseness",
    "terrified": "terrify terrifies terrified terrifying terrifyingly terror",
    "thankful": "thankful thankfully thankfulness",
    "thrilled": "thrill thrills thrilled thrilling thrillingly",
    "tired": "tired tiredly tiredness tiring",
    "tormented": "torment torments tormented tormenting",
    "trapped": "trap traps trapped",
    "triumphant": "triumph triumphs triumphed triumphant triumphantly",
    "troubled": "trouble troubles troubled troubling troublingly",
    "uneasy": "uneasy uneasily unease uneasiness",
    "unhappy": "unhappy unhappily unhappiness",
    "unnerved": "unnerve unnerves unnerved unnerving unnervingly",
    "unsettled": "unsettle unsettles unsettled unsettling unsettlingly",
    "upset": "upset upsets upsetting",
    "valiant": "valiant valiantly",
    "vengeful": "vengeance vengeful vengefully",
    "vibrant": "vibrant vibrantly vibrancy",
    "vigilant": "vigilant vigilantly vigilance",
    "vindictive": "vindictive vindictively vindictiveness",
    "vulnerable": "vulnerable vulnerably vulnerability vulnerabilities",
    "weary": "weary wearily weariness wearier wearying",
    "worn out": "worn_out",
    "worried": "worry worries worried worrying worryingly",
    "worthless": "worthless worthlessly worthlessness",
}
# Everyday phrases that contain a family member but do not name the emotion.
_NOT_A_MATCH = {"kind": r"(?!\s+of\b)", "spite": r""}
_LOOKBEHIND = {"spite": r"(?<!in )"}


def word_family(emotion: str) -> tuple[str, ...]:
    """The surface forms the leakage filter looks for (``_`` = any run of spaces/hyphens)."""
    check_emotions([emotion])
    return tuple(_FAMILIES[emotion].split())


@cache
def _family_regex(emotion: str) -> re.Pattern:
    parts = []
    for form in sorted(word_family(emotion), key=len, reverse=True):
        pat = re.escape(form).replace(r"\-", r"[\s\-]?").replace("_", r"[\s\-]+")
        pat = _LOOKBEHIND.get(form, "") + pat + _NOT_A_MATCH.get(form, "")
        parts.append(pat)
    return re.compile(r"(?<![A-Za-z])(?:" + "|".join(parts) + r")(?![A-Za-z])", re.IGNORECASE)


def leaked_words(text: str, emotion: str) -> list[str]:
    """Every place ``text`` names ``emotion`` (its word family), as written."""
    return [m.group(0) for m in _family_regex(emotion).finditer(text.replace("’", "'"))]


def names_emotion(text: str, emotion: str) -> bool:
    """True if ``text`` writes the emotion word or a member of its word family (the leakage filter)."""
    return bool(_family_regex(emotion).search(text.replace("’", "'")))


def emotions_named(text: str, emotions: Iterable[str] | None = None) -> list[str]:
    """Which of ``emotions`` (default: all 171) the text names."""
    return [e for e in (emotions or all_emotions()) if names_emotion(text, e)]


# --------------------------------------------------------------------------------------------
# Quality checks
# --------------------------------------------------------------------------------------------

CHECKS = ("empty", "non_english", "names_emotion", "truncated", "too_short", "repetitive", "duplicate")
NEUTRAL_CHECKS = ("empty", "non_english", "not_a_dialogue", "emotional", "truncated", "too_short", "repetitive",
                  "duplicate")
_STOPWORDS = frozenset("the a an and or but of to in on at for with as by from that this it its is was were be been "
                       "he she they i you we his her their my your our me him them not no had has have do did "
                       "so if then there what when which who would could will can just into out up".split())
_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
_SENT_END = re.compile(r"[.!?…][\"'”’)\]]*\s*$")
_FIRST_PERSON = re.compile(r"\b(?:I|me|my|mine|myself)\b")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
# Words that would make a neutral dialogue emotional (pleasantries and clear feeling words).
_NEUTRAL_BANNED = re.compile(
    r"(?<![A-Za-z])(?:happy to help|great question|glad|thank you|thanks|sorry|you're welcome|"
    r"i hope this helps|hope this helps|delighted|excited|love|loved|hate|hated|afraid|scared|worried|sad|"
    r"angry|frustrat\w*|wonderful|amazing|awesome|fantastic|unfortunately|feel|feels|feeling|feelings)(?![A-Za-z])",
    re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentences (split after . ! ? … and line breaks), for duplicate and overlap checks."""
    parts = re.split(r"(?<=[.!?…])[\"'”’)]*\s+|\n+", text.strip())
    return [p.strip() for p in parts if p and p.strip()]


def distinct_n(texts: Sequence[str] | str, n: int = 2) -> float:
    """Distinct-n: unique word n-grams / all word n-grams (n-grams never cross texts)."""
    if isinstance(texts, str):
        texts = [texts]
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = [x.lower() for x in words(t)]
        grams.extend(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def english_score(text: str) -> float:
    """Share of words that are common English function words (English prose: 0.35-0.55)."""
    w = [x.lower() for x in words(text)]
    letters = sum(c.isalpha() for c in text)
    ascii_letters = sum(c.isascii() and c.isalpha() for c in text)
    if not w or not letters or ascii_letters / letters < 0.9:
        return 0.0
    return sum(x in _STOPWORDS for x in w) / len(w)


def guess_person(text: str) -> str:
    """"first" if the narration (outside quoted speech) uses I/me/my at least twice, else "third"."""
    narration = _QUOTED.sub(" ", text)
    return "first" if len(_FIRST_PERSON.findall(narration)) >= 2 else "third"


def _normal(text: str) -> str:
    return " ".join(w.lower() for w in words(text))


def to_dialogue(text: str) -> tuple[str, int, int]:
    """Relabel Person/AI (or User/Human, Assistant) turns to ``Human:`` / ``Assistant:``.

    Returns ``(dialogue, n_human_turns, n_assistant_turns)``; lines before the first tag (an
    untagged system prompt) are kept at the top, as the paper's neutral set allows.
    """
    turns: list[list[str]] = []
    head: list[str] = []
    tag = re.compile(r"^\s*(?:\*\*)?(Person|Human|User|AI|Assistant)(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
    for line in text.splitlines():
        m = tag.match(line)
        if m:
            role = "Human" if m.group(1).lower() in ("person", "human", "user") else "Assistant"
            turns.append([role, m.group(2).strip()])
        elif turns:
            turns[-1][1] = (turns[-1][1] + "\n" + line.rstrip()).strip()
        elif line.strip():
            head.append(line.strip())
    body = "\n\n".join(f"{r}: {t}" for r, t in turns if t)
    out = ("\n".join(head) + "\n\n" + body).strip() if head and body else body
    return out, sum(r == "Human" for r, _ in turns), sum(r == "Assistant" for r, _ in turns)


def check_text(text: str, kind: str, emotion: str | None, *, hit_length_limit: bool, n_tokens: int,
               min_tokens: int, seen: dict[str, Any], checks: Sequence[str]) -> str | None:
    """The first failed check's name (the drop reason), or None if the text is kept.

    ``seen`` carries the duplicate detector's state across calls (normalised texts and
    sentences already kept). Order: empty, non_english, names_emotion / not_a_dialogue /
    emotional, truncated, too_short, repetitive, duplicate.
    """
    on = set(checks)
    if "empty" in on and len(words(text)) < 3:
        return "empty"
    # lists and code in neutral dialogues carry fewer function words than prose
    if "non_english" in on and english_score(text) < (0.2 if kind == "story" else 0.1):
        return "non_english"
    if kind == "story" and "names_emotion" in on and emotion and names_emotion(text, emotion):
        return "names_emotion"
    if kind == "neutral":
        if "not_a_dialogue" in on and not (text.startswith("Human:") or "\nHuman:" in text) or \
                "not_a_dialogue" in on and "Assistant:" not in text:
            return "not_a_dialogue"
        if "emotional" in on and _NEUTRAL_BANNED.search(text):
            return "emotional"
    if "truncated" in on and (hit_length_limit or not _SENT_END.search(text)):
        return "truncated"
    if "too_short" in on and n_tokens < min_tokens:
        return "too_short"
    if "repetitive" in on:
        sents = [_normal(s) for s in sentences(text)]
        most = Counter(s for s in sents if s).most_common(1)
        if distinct_n(text, 2) < 0.6 or (most and most[0][1] >= 3):
            return "repetitive"
    if "duplicate" in on:
        norm = _normal(text)
        sents = {s for s in (_normal(x) for x in sentences(text)) if len(s.split()) >= 5}
        texts_seen = seen.setdefault("texts", set())
        sents_seen = seen.setdefault("sentences", set())
        if norm in texts_seen or (sents and len(sents & sents_seen) / len(sents) >= 0.5):
            return "duplicate"
        texts_seen.add(norm)
        sents_seen.update(sents)
    return None


def trim_to_sentence(text: str) -> str:
    """``text`` cut back to the end of its last complete sentence ("" if it has none)."""
    ends = list(re.finditer(r"[.!?…][\"'”’)\]]*(?=\s|$)", text))
    return text[: ends[-1].end()].rstrip() if ends else ""


def story_records(raw: Iterable[dict[str, Any]], count_tokens: Callable[[str], int] | None = None,
                  min_tokens: int = 60, checks: Sequence[str] | None = None,
                  source: str = "generated", trim_cut: bool = False) -> list[dict[str, Any]]:
    """Parse raw generation records (see :func:`emolib.generation.generate_to_store`) into corpus
    records, one per story or dialogue, each with ``kept`` and ``drop_reason``.

    ``count_tokens`` should be the subject model's tokenizer length (the pooling in 02 starts at
    token 50, so ``min_tokens`` = 50 + a margin); without it, tokens are estimated as 1.3 x words.
    ``checks`` (default: all of :data:`CHECKS` / :data:`NEUTRAL_CHECKS`) chooses which checks run;
    the smoke profile turns off the ones a random model cannot pass.

    ``trim_cut``: the last story of an output that hit ``max_new_tokens`` is cut back to its last
    complete sentence and then checked like any other (too short after the cut: dropped); such
    records carry ``gen["trimmed"] = True``. Off, a cut story is dropped as ``truncated``. A small
    writer rarely stops by itself within a CPU budget, so the default profile trims; the pooled
    activations of 02 need complete sentences, not the story's ending.
    """
    count = count_tokens or (lambda t: int(round(1.3 * len(words(t)))))
    out: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for r in raw:
        kind = r.get("kind", "story")
        pieces = split_outputs(r["output"], int(r.get("n_requested", 1)))
        active = checks if checks is not None else (CHECKS if kind == "story" else NEUTRAL_CHECKS)
        if not pieces:
            pieces = [""]
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            cut = last and r.get("finish") == "length"
            gen = r.get("gen")
            if cut and trim_cut and trim_to_sentence(piece):
                piece, cut = trim_to_sentence(piece), False
                gen = dict(gen or {}, trimmed=True)
            text = to_dialogue(piece)[0] or piece if kind == "neutral" else piece
            # duplicates are judged within an emotion for stories, across the whole set for dialogues
            state = seen.setdefault(r.get("emotion") or "_neutral", {})
            reason = check_text(text, kind, r.get("emotion"), hit_length_limit=cut,
                                n_tokens=count(text) if text else 0, min_tokens=min_tokens, seen=state,
                                checks=active)
            out.append({
                "id": f"{r['id']}-{k}", "kind": kind, "emotion": r.get("emotion"), "topic_id": r.get("topic_id"),
                "topic": r.get("topic"), "person": guess_person(text) if kind == "story" else None,
                "text": text, "writer": r.get("writer"), "source": source, "prompt_id": r["id"],
                "seed": r.get("seed"), "gen": gen, "kept": reason is None, "drop_reason": reason,
            })
    return out


# --------------------------------------------------------------------------------------------
# The corpus on disk
# --------------------------------------------------------------------------------------------

def reference_dir() -> Path:
    return Path(str(resources.files("emolib.data").joinpath("reference")))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i} is not valid JSON ({err.msg})") from None
    return rows


def _normalise(rec: dict[str, Any], where: str) -> dict[str, Any]:
    optional = ("kept", "drop_reason") + (("person",) if rec.get("kind") == "neutral" else ())
    missing = [f for f in RECORD_FIELDS if f not in rec and f not in optional]
    if missing:
        raise ValueError(f"{where}: record {rec.get('id')!r} lacks fields {missing}")
    rec = dict(rec)
    rec.setdefault("kept", True)
    rec.setdefault("drop_reason", None)
    rec.setdefault("person", None)
    return rec


def corpus_files(source: str | Path, kind: str = "story") -> list[Path]:
    """The JSONL files :func:`load_corpus` reads for ``source`` and ``kind``."""
    if kind not in ("story", "neutral"):
        raise ValueError(f"kind must be 'story' or 'neutral', got {kind!r}")
    if str(source) == "reference":
        folder = reference_dir()
        files = sorted(folder.glob("stories_part*.jsonl")) if kind == "story" else [folder / "neutral.jsonl"]
        return [f for f in files if f.exists()]
    path = Path(source)
    if path.suffix == ".jsonl":
        return [path]
    folder = path / "stories" if (path / "stories").is_dir() else path
    name = "stories.jsonl" if kind == "story" else "neutral.jsonl"
    if not (folder / name).exists():
        raise FileNotFoundError(f"No {name} in {folder}: run notebook 01_generate_stories for this run folder first, "
                                "or use source='reference' for the hand-written corpus.")
    return [folder / name]


def load_corpus(source: str | Path, kind: str = "story", kept_only: bool = True) -> list[dict[str, Any]]:
    """Corpus records from a run folder (or a .jsonl path), or ``"reference"`` for the hand-written corpus.

    Reference records have no ``kept`` field (every one is kept); it is filled in as True. Files
    named ``chunk*.jsonl`` in the reference folder are drafts and are never read.
    """
    rows: list[dict[str, Any]] = []
    for f in corpus_files(source, kind):
        rows.extend(_normalise(r, str(f)) for r in _read_jsonl(f))
    rows = [r for r in rows if r["kind"] == kind]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i, c in Counter(ids).items() if c > 1})[:5]
        raise ValueError(f"{source}: repeated record ids {dup}")
    return [r for r in rows if r["kept"]] if kept_only else rows


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write a whole (derived) JSONL file atomically."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def corpus_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per emotion and per drop reason, word lengths and distinct-2 per emotion (kept stories)."""
    by_e: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_e.setdefault(r.get("emotion") or "(neutral)", []).append(r)
    per = {}
    for e, rs in by_e.items():
        kept = [r for r in rs if r.get("kept", True)]
        per[e] = {"total": len(rs), "kept": len(kept),
                  "reasons": dict(Counter(r["drop_reason"] for r in rs if not r.get("kept", True))),
                  "distinct2": distinct_n([r["text"] for r in kept], 2) if kept else None,
                  "mean_words": (sum(len(words(r["text"])) for r in kept) / len(kept)) if kept else None}
    return per


def filter_table(records: Sequence[dict[str, Any]]):
    """A pandas table: one row per emotion (or "(neutral)"), columns total, kept, one per drop reason."""
    import pandas as pd

    rows = []
    for e, s in corpus_summary(records).items():
        rows.append({"emotion": e, "total": s["total"], "kept": s["kept"], **s["reasons"]})
    table = pd.DataFrame(rows).fillna(0).set_index("emotion")
    cols = ["total", "kept"] + [c for c in (*CHECKS, *NEUTRAL_CHECKS) if c in table.columns]
    return table[list(dict.fromkeys(cols))].astype(int)


# --------------------------------------------------------------------------------------------
# One call for notebook 01: generate (resumably), parse, filter, write the run folder's corpus
# --------------------------------------------------------------------------------------------

@dataclass
class CorpusRun:
    """What :func:`generate_corpus` made: every parsed record (kept or not) and the timing of this call."""

    stories: list[dict[str, Any]]
    neutral: list[dict[str, Any]]
    story_report: Any  # emolib.generation.GenerationReport
    neutral_report: Any
    folder: Path

    def throughput(self) -> dict[str, Any]:
        reps = [r for r in (self.story_report, self.neutral_report) if r is not None]
        tokens = sum(r.new_tokens for r in reps)
        secs = sum(r.seconds for r in reps)
        return {"prompts_generated": sum(r.n_generated for r in reps), "new_tokens": tokens,
                "seconds": secs, "tokens_per_second": tokens / secs if secs > 0 else None,
                "cpu_seconds": sum(r.cpu_seconds for r in reps),
                "prompts_resumed": sum(r.n_done_before for r in reps)}


def generate_corpus(model, tokenizer, run: str | Path, *, writer: str, emotions: Sequence[str], n_topics: int,
                    stories_per_prompt: int, samples_per_topic: int, settings, neutral_settings,
                    n_neutral_prompts: int, dialogues_per_prompt: int, seed: int,
                    count_tokens: Callable[[str], int] | None = None, min_tokens: int = 60,
                    checks: Sequence[str] | None = None, trim_cut: bool = False,
                    progress: bool = True, engine=None) -> CorpusRun:
    """Write ``<run>/stories/{raw_stories,raw_neutral,stories,neutral}.jsonl``.

    ``model``/``tokenizer`` are the *writer*; ``count_tokens`` should count tokens with the subject
    model's tokenizer (the one that will read the stories in 02). The raw files are append-only and
    resumable; the parsed files are rebuilt from them (atomically) on every call. ``engine`` (see
    :mod:`emolib.distributed`) generates on a Ray cluster or vLLM instead; ``model`` may then be None.
    """
    from .generation import generate_to_store

    folder = Path(run) / "stories"
    folder.mkdir(parents=True, exist_ok=True)
    sjobs = story_jobs(emotions, n_topics, stories_per_prompt, seed, samples_per_topic)
    srep = generate_to_store(model, tokenizer, make_prompts(tokenizer, sjobs), folder / "raw_stories.jsonl",
                             settings, seed=seed, writer=writer, progress=progress, desc="stories", engine=engine)
    nrep = None
    neutral: list[dict[str, Any]] = []
    if n_neutral_prompts > 0:
        njobs = neutral_jobs(n_neutral_prompts, dialogues_per_prompt, seed)
        nrep = generate_to_store(model, tokenizer, make_prompts(tokenizer, njobs), folder / "raw_neutral.jsonl",
                                 neutral_settings, seed=seed, writer=writer, progress=progress, desc="neutral",
                                 engine=engine)
        neutral = story_records(nrep.records, count_tokens, min_tokens, checks, trim_cut=trim_cut)
    stories = story_records(srep.records, count_tokens, min_tokens, checks, trim_cut=trim_cut)
    write_jsonl(folder / "stories.jsonl", stories)
    write_jsonl(folder / "neutral.jsonl", neutral)
    return CorpusRun(stories, neutral, srep, nrep, folder)
