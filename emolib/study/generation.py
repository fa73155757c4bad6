"""Stage 01: writing the stories and neutral dialogues, and the driver that stores what a model writes.

The prompts are our own wording of the paper's two prompts (:func:`story_prompt`,
:func:`neutral_prompt`); :func:`split_outputs` cuts a multi-story output into stories (numbered
lists, ``---`` separators, "Story 2:" headers, titles, preambles and closing remarks);
:func:`story_records` applies every check of :mod:`emolib.study.texts` and keeps the dropped
stories with their reason, so the notebook can show what the filter did per emotion.

The driver, :func:`generate_to_store`:

* **Append-only JSONL store, one write per finished batch** (:mod:`emolib.study.store`), under a writer
  lock held for the whole run (:mod:`emolib.study.locks`). A kill loses at most the batch in flight.
  A torn last line (killed mid-write) is reported and cut by the next write; a batch that is only
  partly on disk is regenerated and only its missing ids are appended, so no id is ever written
  twice and the file ends up byte-identical to an uninterrupted run's.
* **An engine runs the batches elsewhere, the driver writes them.** With ``engine=`` (a Ray
  cluster, :mod:`emolib.engines.ray_engine`; or vLLM, :mod:`emolib.engines.vllm_engine`) whole batches of the
  same plan run on other processes or machines and come back in plan order to the same writing
  code, so a sharded run writes the same file.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from emolib.chat import prompt_text
from emolib.emotions import check_emotions, topics
from emolib.engines.jobs import run_jobs
from emolib.engines.sampling import SamplingSettings, item_seed, sample_batch
from emolib.study.corpus import write_jsonl
from emolib.study.store import JsonlStore
from emolib.study.texts import CHECKS, NEUTRAL_CHECKS, check_text, guess_person, to_dialogue, trim_to_sentence, words

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
    """Jobs -> :class:`emolib.study.generation.Prompt` objects (the chat template applied)."""
    from emolib.study.generation import Prompt

    return [Prompt(id=j["prompt_id"], text=prompt_text(tokenizer, j["prompt"]), meta=dict(j)) for j in jobs]


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


def story_records(raw: Iterable[dict[str, Any]], count_tokens: Callable[[str], int] | None = None,
                  min_tokens: int = 60, checks: Sequence[str] | None = None,
                  source: str = "generated", trim_cut: bool = False) -> list[dict[str, Any]]:
    """Parse raw generation records (see :func:`emolib.study.generation.generate_to_store`) into corpus
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


@dataclass
class CorpusRun:
    """What :func:`generate_corpus` made: every parsed record (kept or not) and the timing of this call."""

    stories: list[dict[str, Any]]
    neutral: list[dict[str, Any]]
    story_report: Any  # emolib.study.generation.GenerationReport
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
    :mod:`emolib.engines.ray_engine`) generates on a Ray cluster or vLLM instead; ``model`` may then be None.
    """
    from emolib.study.generation import generate_to_store

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


@dataclass(frozen=True)
class Prompt:
    """One generation job: a stable unique ``id``, the model-ready ``text`` (chat template applied)
    and ``meta`` fields copied verbatim into the stored record (kind, emotion, topic, ...)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationReport:
    """What one call to :func:`generate_to_store` did (only the work done in this call is timed)."""

    n_prompts: int
    n_done_before: int
    n_generated: int
    n_batches_run: int
    new_tokens: int
    seconds: float
    records: list[dict[str, Any]]
    cpu_seconds: float = 0.0  # process CPU time (all threads): on a shared machine, wall time alone misleads
    engine: str = "local"  # where the batches ran ("local", "ray", "vllm"); cpu_seconds counts this process only

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def plan_batches(prompts: Sequence[Prompt], tokenizer, batch_size: int) -> list[list[Prompt]]:
    """Sort prompts by token length (then id) and cut them into batches: less padding, and a plan
    that depends only on the prompt set, so a resumed run rebuilds exactly the same batches."""
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"prompt ids must be unique; repeated: {dup}")
    lengths = {p.id: len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in prompts}
    order = sorted(prompts, key=lambda p: (lengths[p.id], p.id))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, mininterval=2.0)


def generate_to_store(model, tokenizer, prompts: Sequence[Prompt], store: str | Path | JsonlStore,
                      settings: SamplingSettings, seed: int, writer: str, progress: bool = True,
                      desc: str = "generating", engine=None,
                      _after_batch: Callable[[int, list[dict[str, Any]]], None] | None = None) -> GenerationReport:
    """Generate every prompt not yet in ``store``, one batch at a time, appending each finished batch.

    Each record holds the prompt's ``meta`` plus: ``id``, ``prompt``, ``output``, ``writer`` (the
    model that wrote it; may differ from the subject model), ``seed`` (the item's own seed), ``gen``
    (the sampling settings and run seed), ``batch``, ``n_prompt_tokens``, ``n_new_tokens``,
    ``finish``. Resuming with other settings or another writer is refused: the records would not
    be the ones an uninterrupted run makes. ``engine`` (None: ``model`` in this process) runs the
    batches on an engine's workers; ``model`` may then be None, ``tokenizer`` must be the writer's.
    The Ray engine writes exactly what this process would; an engine with another sampler (vLLM)
    marks ``gen`` with its name, so the two never mix in one store. ``_after_batch`` is a test
    hook (simulated crashes). The store's writer lock is held for the whole call: a second process
    writing the same store fails at once with :class:`emolib.study.locks.LockedError` naming this one.
    """
    store = store if isinstance(store, JsonlStore) else JsonlStore(store)
    with store.writer(f"generating {desc} into {store.path.name}"):
        return _generate_locked(model, tokenizer, prompts, store, settings, seed, writer, progress, desc, engine,
                                _after_batch)


def _generate_locked(model, tokenizer, prompts, store: JsonlStore, settings: SamplingSettings, seed: int, writer: str,
                     progress: bool, desc: str, engine, _after_batch) -> GenerationReport:
    gen = dict(settings.to_dict(), seed=int(seed), **(getattr(engine, "gen_tag", None) or {}))
    existing = store.read()
    for r in existing[:1]:
        if r.get("gen") != gen or r.get("writer") != writer:
            raise ValueError(
                f"{store.path} was written with writer={r.get('writer')!r}, gen={r.get('gen')}; this call has "
                f"writer={writer!r}, gen={gen}. Use a new run folder (or delete the file) to change settings.")
    done = {r["id"] for r in existing}
    batches = plan_batches(prompts, tokenizer, settings.batch_size)
    todo = [(b, batch) for b, batch in enumerate(batches) if any(p.id not in done for p in batch)]
    records = list(existing)
    new_tokens, n_generated, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    bar = _progress(len(prompts), desc, progress)
    bar.update(len(prompts) - sum(sum(p.id not in done for p in batch) for _, batch in todo))
    jobs = [{"texts": [p.text for p in batch], "seeds": [item_seed(seed, p.id) for p in batch], "settings": settings}
            for _, batch in todo]
    try:  # closing(): an engine cancels the work still queued when a run stops early
        with closing(run_jobs(sample_batch, jobs, model, tokenizer, engine)) as results:
            for (b, batch), job, outs in zip(todo, jobs, results):
                fresh = []
                for p, s, c in zip(batch, job["seeds"], outs):
                    if p.id in done:  # part of a batch that was half on disk: regenerated identically, not rewritten
                        continue
                    rec = dict(p.meta)
                    rec.update(id=p.id, prompt=p.meta.get("prompt", p.text), output=c.text, writer=writer, seed=s,
                               gen=gen, batch=b, n_prompt_tokens=len(tokenizer(p.text, add_special_tokens=False)["input_ids"]),
                               n_new_tokens=c.n_new_tokens, finish=c.finish)
                    fresh.append(rec)
                if _after_batch is not None:
                    _after_batch(b, fresh)
                store.append(fresh)
                done.update(r["id"] for r in fresh)
                records.extend(fresh)
                new_tokens += sum(c.n_new_tokens for c in outs)
                n_generated += len(fresh)
                elapsed = time.perf_counter() - t0
                bar.update(len(fresh))
                bar.set_postfix_str(f"{new_tokens / max(elapsed, 1e-9):.0f} tok/s")
    finally:
        bar.close()
    order = {p.id: i for i, p in enumerate(prompts)}
    records.sort(key=lambda r: order.get(r["id"], len(order)))
    return GenerationReport(len(prompts), len(existing), n_generated, len(todo), new_tokens,
                            time.perf_counter() - t0, records, time.process_time() - c0,
                            getattr(engine, "kind", "local"))
