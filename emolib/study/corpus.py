"""The story corpora on disk (a run's generated stories, the project's reference corpus), and
the reference corpus's design and quality gates.

Record fields (one JSON object per line): ``id, kind ("story"|"neutral"), emotion (None for neutral),
topic_id, topic, person ("first"|"second"|"third"|None), text, writer, source ("generated"|"reference"),
prompt_id, seed, gen, kept, drop_reason`` and, for the reference corpus v2, ``voice``.

Design: every emotion's stories are spread over a shared list of everyday topics by a seeded,
balanced assignment (:func:`assign_slots`), and over several written voices
(``data/reference/voices.json``), both recorded per story, so that neither topic nor narrator can
stand in for the emotion.

Gates (:func:`check_stories`), run as tests over the package data and by the writers on their
drafts:

* **leakage**: the emotion's word family (:mod:`emolib.study.corpus`) and its direct synonyms
  (``data/synonyms.json``) never appear;
* **length**: 60..250 words;
* **shared sentence**: no sentence of five or more words occurs in two stories;
* **shared 8-gram**: no run of eight words occurs in two stories;
* **tf-idf**: the cosine between any two stories of *different* emotions is at most 0.30
  (English stop words removed; so near-synonyms must be different stories, not rewrites);
* **distinct-2**: per emotion, unique content bigrams / all content bigrams >= 0.85. A content
  bigram has at least one word outside sklearn's English stop list. Why not all bigrams: thirty
  stories by *different* emotions on different topics already score 0.82 on all bigrams ("of the",
  "in the" recur in any English), so the raw measure cannot tell reuse from grammar at this size;
  on content bigrams the same thirty stories score 0.89-0.91 and five near-synonyms' rewrites 0.84.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from emolib.emotions import check_emotions, paper_clusters, topics
from emolib.study.texts import CHECKS, NEUTRAL_CHECKS, _family_regex, distinct_n, sentences, words

RECORD_FIELDS = ("id", "kind", "emotion", "topic_id", "topic", "person", "text", "writer", "source",
                 "prompt_id", "seed", "gen", "kept", "drop_reason")


REFERENCE_WRITER = "emolib-authors (hand-written reference corpus)"


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
        files = sorted(folder.glob("stories_*.jsonl")) if kind == "story" else [folder / "neutral.jsonl"]
        return [f for f in files if f.exists()]
    path = Path(source)
    if path.suffix == ".jsonl":
        return [path]
    folder = path / "stories" if (path / "stories").is_dir() else path
    name = "stories.jsonl" if kind == "story" else "neutral.jsonl"
    if not (folder / name).exists():
        raise FileNotFoundError(f"No {name} in {folder}: run notebook 01_generate_stories for this run folder first, "
                                "or use source='reference' for the project's reference corpus.")
    return [folder / name]


def load_corpus(source: str | Path, kind: str = "story", kept_only: bool = True) -> list[dict[str, Any]]:
    """Corpus records from a run folder (or a .jsonl path), or ``"reference"`` for the project's reference corpus.

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


def load_neutral_reference(source: str | Path = "reference") -> list[dict[str, Any]]:
    """Neutral Human/Assistant dialogues as corpus records: the project's package-data set
    (``"reference"``) or a run folder's ``stories/neutral.jsonl``.

    Goes through :func:`emolib.study.corpus.load_corpus`; for the reference set, if that loader is
    missing or rejects the file, the package JSONL is read directly (with a warning).
    """
    try:
        from emolib.study.corpus import load_corpus

        return list(load_corpus(source, kind="neutral"))
    except (ImportError, AttributeError, ValueError, KeyError) as err:
        if str(source) != "reference":
            raise
        import warnings

        warnings.warn(f"emolib.study.corpus.load_corpus could not read the reference neutral set ({err}); "
                      "reading emolib/data/reference/neutral.jsonl directly.", stacklevel=2)
    text = resources.files("emolib.data").joinpath("reference/neutral.jsonl").read_text(encoding="utf-8")
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in recs if r.get("kind") == "neutral" and r.get("kept", True)]


WORDS_RANGE = (60, 250)


SHARED_SENTENCE_MIN_WORDS = 5


SHARED_NGRAM = 8


TFIDF_MAX = 0.30


DISTINCT2_FLOOR = 0.85


MIN_VOICES_PER_EMOTION = 5


def _data(name: str) -> dict:
    return json.loads(resources.files("emolib.data").joinpath(name).read_text(encoding="utf-8"))


@cache
def voices() -> dict[str, dict[str, Any]]:
    """The voice cards, id -> card (``data/reference/voices.json``)."""
    return {v["id"]: v for v in _data("reference/voices.json")["voices"]}


@cache
def cluster_of() -> dict[str, str]:
    """Emotion -> the paper's k=10 cluster name (Table 12)."""
    return {e: c for c, members in paper_clusters().items() for e in members}


def _expand(form: str) -> list[str]:
    """Brace expansion: ``fear{,s,ed}`` -> fear, fears, feared (several groups multiply)."""
    m = re.search(r"\{([^{}]*)\}", form)
    if not m:
        return [form]
    head, tail = form[: m.start()], form[m.end():]
    return [x for alt in m.group(1).split(",") for x in _expand(head + alt + tail)]


@cache
def synonyms(emotion: str) -> tuple[str, ...]:
    """The direct synonyms the leakage gate forbids for ``emotion`` (expanded; regex fragments)."""
    check_emotions([emotion])
    table = _data("synonyms.json")["synonyms"]
    return tuple(f for form in table.get(emotion, "").split() for f in _expand(form))


@cache
def _synonym_regex(emotion: str) -> re.Pattern | None:
    forms = synonyms(emotion)
    if not forms:
        return None
    parts = [f.replace("-", r"[\s\-]?").replace("_", r"[\s\-]+") for f in sorted(forms, key=len, reverse=True)]
    return re.compile(r"(?<![A-Za-z])(?:" + "|".join(parts) + r")(?![A-Za-z])", re.IGNORECASE)


def leaks(text: str, emotion: str) -> list[str]:
    """Every place ``text`` names ``emotion``: its word family or a direct synonym, as written."""
    text = text.replace("’", "'")
    found = [m.group(0) for m in _family_regex(emotion).finditer(text)]
    rx = _synonym_regex(emotion)
    if rx is not None:
        found += [m.group(0) for m in rx.finditer(text)]
    return found


@dataclass(frozen=True)
class Slot:
    """One story to be written: its id, emotion, topic and voice."""

    id: str
    emotion: str
    topic_id: int
    topic: str
    voice: str


def assign_slots(per_emotion: Mapping[str, int], voice_ids: Sequence[str], *, seed: int = 0,
                 fixed: Iterable[Mapping[str, Any]] = (), id_prefix: str = "v2") -> list[Slot]:
    """Give each emotion ``per_emotion[e]`` new stories, each with a topic and a voice.

    Topics: an emotion never gets a topic twice (including its ``fixed`` stories, e.g. kept v1
    stories with their own topics), and each new slot takes, among the topics the emotion has not
    used, one of those used least often so far *within the emotion's paper cluster*, then least
    often overall, ties broken by a seeded draw; emotions are visited round by round in a seeded
    order so that no emotion gets first pick of every round. The result: every topic used about
    equally often overall and within each cluster, so topic cannot predict cluster.

    Voices: each emotion's new slots are dealt over ``voice_ids`` in a seeded rotation (so every
    voice gets ``n // len(voice_ids)`` or one more), then paired with topics at random.
    """
    rng = random.Random(seed)
    n_topics = len(topics())
    clusters = cluster_of()
    used: dict[str, set[int]] = defaultdict(set)
    overall: Counter[int] = Counter()
    within: dict[str, Counter[int]] = defaultdict(Counter)
    counter: Counter[str] = Counter()
    for r in fixed:
        e, t = r["emotion"], int(r["topic_id"])
        used[e].add(t)
        overall[t] += 1
        within[clusters[e]][t] += 1
        counter[e] += 1
    check_emotions(list(per_emotion))
    todo = {e: n for e, n in per_emotion.items() if n > 0}
    picks: dict[str, list[int]] = defaultdict(list)
    while todo:
        order = sorted(todo)
        rng.shuffle(order)
        for e in order:
            c = clusters[e]
            free = [t for t in range(n_topics) if t not in used[e]]
            if not free:
                raise ValueError(f"{e}: more stories asked than there are topics ({n_topics})")
            best = min((within[c][t], overall[t]) for t in free)
            t = rng.choice([t for t in free if (within[c][t], overall[t]) == best])
            used[e].add(t)
            overall[t] += 1
            within[c][t] += 1
            picks[e].append(t)
            todo[e] -= 1
            if not todo[e]:
                del todo[e]
    slots = []
    for e in sorted(picks):
        ts = picks[e]
        rot = list(voice_ids)
        rng.shuffle(rot)
        vs = [rot[i % len(rot)] for i in range(len(ts))]
        rng.shuffle(vs)
        for t, v in zip(ts, vs, strict=True):
            counter[e] += 1
            slots.append(Slot(f"{id_prefix}-{e.replace(' ', '_')}-{counter[e]:02d}", e, t, topics()[t], v))
    return slots


@dataclass
class GateReport:
    """Violations of each gate: gate name -> list of (ids involved, detail)."""

    violations: dict[str, list[tuple[tuple[str, ...], str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, gate: str, ids: Iterable[str], detail: str) -> None:
        self.violations[gate].append((tuple(ids), detail))

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def counts(self) -> dict[str, int]:
        return {g: len(v) for g, v in self.violations.items() if v}

    def involving(self, ids: Iterable[str]) -> GateReport:
        """Only the violations that involve one of ``ids`` (a writer's own drafts)."""
        keep = set(ids)
        out = GateReport()
        for g, vs in self.violations.items():
            for v in vs:
                if keep & set(v[0]):
                    out.add(g, *v)
        return out

    def lines(self, limit: int | None = None) -> list[str]:
        out = []
        for g, vs in sorted(self.violations.items()):
            for ids, detail in vs[:limit]:
                out.append(f"{g}: {', '.join(ids)}: {detail}")
        return out


def _norm_words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in words(text)]


def content_distinct2(texts: Sequence[str]) -> float:
    """Unique / all word bigrams that contain at least one non-stop word (see the module doc)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS as stop

    grams = []
    for t in texts:
        w = _norm_words(t)
        grams += [b for b in zip(w, w[1:]) if not (b[0] in stop and b[1] in stop)]
    return len(set(grams)) / len(grams) if grams else 0.0


def tfidf_pairs(texts: Sequence[str], labels: Sequence[str], threshold: float = TFIDF_MAX):
    """Index pairs (i, j, cosine) of texts with different labels whose tf-idf cosine exceeds ``threshold``."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) < 2:
        return []
    x = TfidfVectorizer(stop_words="english").fit_transform(texts)
    lab = np.asarray(labels)
    out = []
    step = 1024
    for s in range(0, len(texts), step):
        block = (x[s:s + step] @ x.T).toarray()
        rows, cols = np.nonzero(block > threshold)
        for r, c in zip(rows, cols):
            i = s + int(r)
            if i < c and lab[i] != lab[c]:
                out.append((i, int(c), float(block[r, c])))
    return out


def check_stories(stories: Sequence[Mapping[str, Any]], *, per_emotion_floor: bool = True) -> GateReport:
    """Run every gate over ``stories`` (records with id, emotion, text) and collect the violations."""
    rep = GateReport()
    lo, hi = WORDS_RANGE
    sent_owner: dict[str, set[str]] = defaultdict(set)
    gram_owner: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for r in stories:
        found = leaks(r["text"], r["emotion"])
        if found:
            rep.add("leakage", [r["id"]], f"names {r['emotion']!r}: {sorted(set(found))}")
        n = len(words(r["text"]))
        if not lo <= n <= hi:
            rep.add("length", [r["id"]], f"{n} words, want {lo}..{hi}")
        for s in sentences(r["text"]):
            key = " ".join(_norm_words(s))
            if len(key.split()) >= SHARED_SENTENCE_MIN_WORDS:
                sent_owner[key].add(r["id"])
        w = _norm_words(r["text"])
        for i in range(len(w) - SHARED_NGRAM + 1):
            gram_owner[tuple(w[i:i + SHARED_NGRAM])].add(r["id"])
    for s, ids in sent_owner.items():
        if len(ids) > 1:
            rep.add("shared_sentence", sorted(ids), repr(s))
    seen_pairs = set()
    for g, ids in gram_owner.items():
        if len(ids) > 1:
            key = tuple(sorted(ids))
            if key not in seen_pairs:  # one report per pair of stories, with its first shared 8-gram
                seen_pairs.add(key)
                rep.add("shared_8gram", key, repr(" ".join(g)))
    for i, j, c in tfidf_pairs([r["text"] for r in stories], [r["emotion"] for r in stories]):
        rep.add("tfidf", [stories[i]["id"], stories[j]["id"]],
                f"cosine {c:.2f} > {TFIDF_MAX} ({stories[i]['emotion']} vs {stories[j]['emotion']})")
    if per_emotion_floor:
        by_e: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in stories:
            by_e[r["emotion"]].append(r)
        for e, rs in by_e.items():
            d = content_distinct2([r["text"] for r in rs])
            if d < DISTINCT2_FLOOR:
                rep.add("distinct2", [r["id"] for r in rs], f"{e}: content distinct-2 {d:.3f} < {DISTINCT2_FLOOR}")
    return rep


def balance_table(stories: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How evenly topics and voices are used: per-topic counts overall and per cluster, voices per emotion."""
    clusters = cluster_of()
    overall = Counter(r["topic_id"] for r in stories)
    per_cluster: dict[str, Counter[int]] = defaultdict(Counter)
    voices_per: dict[str, Counter[str]] = defaultdict(Counter)
    for r in stories:
        per_cluster[clusters[r["emotion"]]][r["topic_id"]] += 1
        voices_per[r["emotion"]][r.get("voice")] += 1
    return {"topic_counts": overall, "topic_counts_by_cluster": per_cluster, "voices_by_emotion": voices_per}


def topic_cluster_purity(stories: Sequence[Mapping[str, Any]]) -> float:
    """Mean over topics of the share of the topic's stories that fall in its most common cluster."""
    clusters = cluster_of()
    by_t: dict[int, Counter[str]] = defaultdict(Counter)
    for r in stories:
        by_t[r["topic_id"]][clusters[r["emotion"]]] += 1
    return sum(c.most_common(1)[0][1] / sum(c.values()) for c in by_t.values()) / len(by_t)


def topic_predicts_cluster(stories: Sequence[Mapping[str, Any]], n_perm: int = 300, seed: int = 0) -> dict[str, float]:
    """Permutation test: is the topic -> cluster purity higher than when clusters are shuffled over stories?

    Returns the observed purity, the null's mean and 95th percentile, and the one-sided p-value.
    """
    rng = random.Random(seed)
    obs = topic_cluster_purity(stories)
    emos = [r["emotion"] for r in stories]
    null = []
    for _ in range(n_perm):
        rng.shuffle(emos)
        fake = [{"topic_id": r["topic_id"], "emotion": e} for r, e in zip(stories, emos)]
        null.append(topic_cluster_purity(fake))
    null.sort()
    p = (1 + sum(v >= obs for v in null)) / (1 + n_perm)
    return {"purity": obs, "null_mean": sum(null) / len(null), "null_p95": null[int(0.95 * len(null)) - 1], "p": p}


def blind_check(path: str | Path | None = None) -> dict[str, Any]:
    """The blind readers' guesses (``data/reference/blind_check.jsonl``) and their rates.

    Each record: the story ``id``, its ``emotion``, the reader's ``top3`` guesses (from the 171
    words, most likely first, made from the text alone), the ``reader`` and the ``round``. Round 1
    read the stories as first written; the stories no reader recognised were rewritten and read again
    by a fresh reader (round 2). Returns round 1's ``n``, ``top1``, ``top3``, ``same_cluster`` (the
    first guess in the story's paper cluster), the rates per reader and per round, ``current`` (each
    story by its latest round: the corpus as shipped), the ``rewritten`` ids and the guesses.
    """
    path = Path(path) if path is not None else reference_dir() / "blind_check.jsonl"
    guesses = _read_jsonl(path)
    co = cluster_of()

    def rates(gs):
        n = len(gs)
        return {"n": n, "top1": sum(g["top3"][0] == g["emotion"] for g in gs) / max(n, 1),
                "top3": sum(g["emotion"] in g["top3"] for g in gs) / max(n, 1),
                "same_cluster": sum(co.get(g["top3"][0]) == co.get(g["emotion"]) for g in gs) / max(n, 1)}

    readers = sorted({g.get("reader", "?") for g in guesses})
    latest = max((g.get("round", 1) for g in guesses), default=1)
    # a story rewritten after round k is judged by its later round; its earlier guesses read an older text
    last_round = {}
    for g in guesses:
        last_round[g["id"]] = max(last_round.get(g["id"], 0), g.get("round", 1))
    current = [g for g in guesses if g.get("round", 1) == last_round[g["id"]]]
    return {**rates([g for g in guesses if g.get("round", 1) == 1]),
            "by_reader": {r: rates([g for g in guesses if g.get("reader", "?") == r]) for r in readers},
            "by_round": {k: rates([g for g in guesses if g.get("round", 1) == k]) for k in range(1, latest + 1)},
            "current": rates(current), "rewritten": sorted(i for i, k in last_round.items() if k > 1),
            "chance_top1": 1 / 171, "guesses": guesses}


def check_dialogues(records: Sequence[Mapping[str, Any]]) -> GateReport:
    """Gates of the two-speaker and deflection dialogues (``emolib/data/dialogues``), by record ``kind``.

    Two-speaker: 6-10 exchanges, Human first and Assistant last, alternating; neither speaker's emotion
    (word family or a direct synonym) named anywhere; 150-700 words. Deflection: the character named in
    the scenario and speaking 1-2 times, with >= 12 words; neither the hidden target nor the displayed
    emotion named in the character's own words; a scenario of 40-160 words. Both: no sentence of
    >= ``SHARED_SENTENCE_MIN_WORDS`` words shared by two records.
    """
    from emolib.chat import dialogue_messages

    rep = GateReport()
    owner: dict[str, set[str]] = defaultdict(set)
    for r in records:
        kind = r.get("kind")
        if kind == "two_speaker":
            msgs = dialogue_messages(r["text"])
            roles = [m["role"] for m in msgs]
            n_ex = roles.count("user")
            alternating = all(a != b for a, b in zip(roles, roles[1:]))
            if not (6 <= n_ex <= 10 and roles.count("assistant") == n_ex and roles[0] == "user"
                    and roles[-1] == "assistant" and alternating):
                rep.add("turns", [r["id"]], f"{n_ex} exchanges or turns out of order")
            for e in {r["human_emotion"], r["assistant_emotion"]}:
                found = leaks(r["text"], e)
                if found:
                    rep.add("leakage", [r["id"]], f"names {e!r}: {sorted(set(found))}")
            n = len(words(r["text"]))
            if not 150 <= n <= 700:
                rep.add("length", [r["id"]], f"{n} words, want 150..700")
            texts = [r["text"]]
        elif kind == "deflection":
            said = " ".join(t["text"] for t in r["turns"] if t["speaker"] == r["character"])
            n_said = sum(t["speaker"] == r["character"] for t in r["turns"])
            if r["character"] not in r["scenario"] or not 1 <= n_said <= 2 or len(words(said)) < 12:
                rep.add("turns", [r["id"]], f"character unnamed in the scenario, or speaks {n_said} times / "
                                            f"{len(words(said))} words")
            for e in (r["target"], r["displayed"]):
                found = leaks(said, e)
                if found:
                    rep.add("leakage", [r["id"]], f"the character's words name {e!r}: {sorted(set(found))}")
            n = len(words(r["scenario"]))
            if not 40 <= n <= 160:
                rep.add("length", [r["id"]], f"scenario of {n} words, want 40..160")
            texts = [r["scenario"]] + [t["text"] for t in r["turns"]]
        else:
            raise ValueError(f"Record {r.get('id')!r}: unknown dialogue kind {kind!r}")
        for t in texts:
            for s in sentences(t):
                key = " ".join(_norm_words(s))
                if len(key.split()) >= SHARED_SENTENCE_MIN_WORDS:
                    owner[key].add(r["id"])
    for s, ids in owner.items():
        if len(ids) > 1:
            rep.add("shared_sentence", sorted(ids), repr(s))
    return rep
