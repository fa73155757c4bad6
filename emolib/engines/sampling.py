"""Batched, seeded sampling: the unit of work every engine runs (here, on Ray workers) or translates (vLLM).

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
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from emolib.models import model_device


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


@dataclass
class Completion:
    text: str
    n_new_tokens: int
    finish: str  # "eos" or "length"
    token_ids: list[int] = field(default_factory=list)


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
