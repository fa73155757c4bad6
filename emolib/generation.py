"""Batched, seeded, resumable text generation: the story writer.

Why it looks the way it does:

* **Batched, left-padded, with a KV cache.** On a CPU a 135M model spends most of a one-prompt
  decoding step on overhead; 64 prompts decoded together cost little more than one. Prompts are
  left-padded so every row's next token sits in the last column, and position ids are counted
  from each row's first real token, so padding never changes what a row sees.
* **A seed per item, a random stream per item.** Each prompt has its own ``torch.Generator``
  seeded from ``(seed, prompt id)``; the token drawn for a row depends only on that row's
  distribution and its own stream, never on which other prompts share the batch.
* **Deterministic batches, resumed at batch granularity.** Floating-point sums can differ in the
  last bit when the batch shape changes, and a sampled token can flip on such a bit. So the plan
  (prompts sorted by token length, then id, cut into ``batch_size`` chunks) is a pure function
  of the prompt list and the settings, and a resumed run regenerates whole batches: an item is
  produced in exactly the batch it would have been in without the crash, hence identically.
* **Append-only JSONL store, one write per finished batch** (:mod:`emolib.store`), under a writer
  lock held for the whole run (:mod:`emolib.locks`). A kill loses at most the batch in flight.
  A torn last line (killed mid-write) is reported and cut by the next write; a batch that is only
  partly on disk is regenerated and only its missing ids are appended, so no id is ever written
  twice and the file ends up byte-identical to an uninterrupted run's.
* **An engine runs the batches elsewhere, the driver writes them.** With ``engine=`` (a Ray
  cluster, :mod:`emolib.distributed`; or vLLM, :mod:`emolib.vllm_backend`) whole batches of the
  same plan run on other processes or machines and come back in plan order to the same writing
  code, so a sharded run writes the same file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .distributed import run_jobs
from .models import model_device
from .store import JsonlStore


@dataclass(frozen=True)
class SamplingSettings:
    """How text is sampled. ``temperature=0`` means greedy decoding (no randomness)."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50  # 0 = off (then the whole vocabulary is sorted each step: slower)
    repetition_penalty: float = 1.1  # 1.0 = off; applied to every token already in the row (prompt included)
    batch_size: int = 64
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Prompt:
    """One generation job: a stable unique ``id``, the model-ready ``text`` (chat template applied)
    and ``meta`` fields copied verbatim into the stored record (kind, emotion, topic, ...)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    n_new_tokens: int
    finish: str  # "eos" or "length"
    token_ids: list[int] = field(default_factory=list)


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


def item_seed(seed: int, item_id: str) -> int:
    """A 63-bit seed for one item, a pure function of the run seed and the item id."""
    digest = hashlib.sha256(f"{int(seed)}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if isinstance(im_end, int):
        ids.add(im_end)
    return ids


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty on the token ids in ``seen`` (duplicates are harmless)."""
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def _draw(logits: torch.Tensor, settings: SamplingSettings, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row. Rows use their own generators; the maths is row-independent."""
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k and 0 < settings.top_k < logits.shape[-1]:
        sorted_logits, order = torch.topk(logits, settings.top_k, dim=-1, sorted=True)
    else:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    if 0 < settings.top_p < 1:
        cum = probs.cumsum(dim=-1)
        drop = (cum - probs) > settings.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = probs.masked_fill(drop, 0.0)
    cum = probs.cumsum(dim=-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]).to(cum.dtype)
    u = u * cum[:, -1]
    pick = torch.searchsorted(cum, u.unsqueeze(1)).clamp(max=cum.shape[1] - 1)
    return order.gather(1, pick).squeeze(1)


@torch.no_grad()
def sample_batch(model, tokenizer, texts: Sequence[str], seeds: Sequence[int],
                 settings: SamplingSettings) -> list[Completion]:
    """Generate one completion per text in a single left-padded batch with a KV cache.

    Rows that reach an end-of-sequence token are dropped from the batch (and the cache), so a
    batch costs what its longest row costs, not ``batch_size`` times that.
    """
    from transformers import DynamicCache

    if len(texts) != len(seeds):
        raise ValueError("one seed per text")
    device = model_device(model)
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    n = ids.shape[0]
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s))
        gens.append(g)
    eos = set() if settings.ignore_eos else _eos_ids(model, tokenizer)
    eos_t = torch.tensor(sorted(eos), device=device, dtype=torch.long)
    # Repetition-penalty bookkeeping: pad positions are replaced by the row's first real token,
    # which the row already contains, so padding never changes a row's penalty.
    first_real = ids.gather(1, mask.argmax(dim=1, keepdim=True))
    seen = torch.where(mask.bool(), ids, first_real)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    active = list(range(n))  # original row index of each row still in the batch
    new_tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    next_pos = pos[:, -1:] + 1
    for _step in range(settings.max_new_tokens):
        # .to(device): on a model sharded over GPUs the LM head may sit on another device than the inputs
        logits = out.logits[:, -1, :].float().to(device)
        if settings.repetition_penalty and settings.repetition_penalty != 1.0:
            logits = _penalise(logits, seen, settings.repetition_penalty)
        tok = _draw(logits, settings, [gens[i] for i in active])
        is_eos = torch.isin(tok, eos_t)
        keep = []
        for r, i in enumerate(active):
            if bool(is_eos[r]):
                finish[i] = "eos"
            else:
                new_tokens[i].append(int(tok[r]))
                keep.append(r)
        if not keep or _step == settings.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            idx = torch.tensor(keep)  # a CPU index selects rows of tensors on any device (sharded caches too)
            cache.batch_select_indices(idx)
            tok, mask, seen, next_pos = tok[idx], mask[idx], seen[idx], next_pos[idx]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        seen = torch.cat([seen, tok.unsqueeze(1)], dim=1)
        out = model(input_ids=tok.unsqueeze(1), attention_mask=mask, position_ids=next_pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        next_pos = next_pos + 1
    return [Completion(tokenizer.decode(t, skip_special_tokens=True), len(t), f, t)
            for t, f in zip(new_tokens, finish)]


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
    writing the same store fails at once with :class:`emolib.locks.LockedError` naming this one.
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
