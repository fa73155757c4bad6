"""Text checks for stories and dialogues: leakage (the emotion word and its family), words, sentences, diversity, language, and the quality checks generated text goes through."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from emolib.emotions import all_emotions, check_emotions

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
