"""Shared machinery of the causal experiments (stage 06): batched scoring under steering and the
option-letter (A/B) read-out. Prompts and their spans come from :mod:`emolib.chat`.

Why a module of its own: every experiment of stage 06 does the same three things -- format a
user turn (plus an assistant prefill) the way the model was trained to read it, find where some
piece of text sits in token positions (so steering can be confined to it), and read a few logits
at the end -- and each of those has a trap worth fixing once:

* chat templates add their own special tokens, so the text is tokenized without adding more;
* a span is found with the tokenizer's offset mapping, never by re-tokenizing a substring (BPE
  merges at the edges make substring token counts wrong);
* option letters are read at the position where the model would write them: if the tokenizer
  merges the opener with the letter (``"(A"`` as one token), the prefill stops before the opener
  and the merged tokens are compared instead, so the model is asked exactly what it would produce;
* batches are left-padded with mask-aware ``position_ids``, and steering scopes are counted
  from each row's first real token (:func:`emolib.steering.steer` does the same), so a span
  means the same tokens in every row of a batch.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emolib.capture import pad_id_of, pad_left
from emolib.chat import ChatPrompt, build_prompt, continuation_ids
from emolib.models import base_model, model_device
from emolib.steering import Steering, apply_steering, steer_rows


@dataclass(frozen=True)
class OptionReadout:
    """Where and what to read for a lettered choice.

    ``prefill`` is the text to put after the assistant header; ``token_ids[k]`` the single token
    the model would write next for option ``letters[k]``. ``merged`` says the opener and letter
    are one token in this tokenizer (then ``prefill`` is empty and the tokens are e.g. ``"(A"``).
    """

    prefill: str
    letters: tuple[str, ...]
    token_ids: tuple[int, ...]
    merged: bool


def option_readout(tokenizer, user: str, letters: Sequence[str] = ("A", "B"), opener: str = "(",
                   system: str | None = None) -> OptionReadout:
    """Find the tokens to compare for lettered options after an assistant reply prefilled to ``opener``.

    Tries, in order: prefill = ``opener`` and one new token per letter (the paper's set-up);
    prefill = "" and one merged ``opener+letter`` token per letter. Anything else raises, naming the
    tokens found, rather than silently comparing the wrong logits.
    """
    tried = []
    for prefill, merged in ((opener, False), ("", True)):
        base = build_prompt(tokenizer, user, prefill, system).ids
        ids = []
        for letter in letters:
            # the whole reply as the format writes it (e.g. "Assistant: (A"), so separators are right
            full = build_prompt(tokenizer, user, opener + letter, system).ids
            extra = full[len(base):]
            if full[: len(base)] != base or len(extra) != 1:
                tried.append(f"prefill {prefill!r} + {letter!r} -> {[tokenizer.decode([t]) for t in full[len(base) - 1:]]}")
                break
            ids.append(extra[0])
        else:
            if len(set(ids)) != len(ids):
                raise ValueError(f"Options {letters} map to the same token; cannot tell them apart.")
            return OptionReadout(prefill=prefill, letters=tuple(letters), token_ids=tuple(ids), merged=merged)
    raise ValueError("No single-token read-out for the option letters: " + "; ".join(tried))


def choice_prompt(tokenizer, user: str, letters: Sequence[str] = ("A", "B"), opener: str = "(",
                  system: str | None = None, marks: Mapping[str, str] | None = None) -> tuple[ChatPrompt, OptionReadout]:
    """A lettered-choice prompt, prefilled the way :func:`option_readout` found, and its read-out."""
    ro = option_readout(tokenizer, user, letters, opener, system)
    return build_prompt(tokenizer, user, ro.prefill, system, marks), ro


def pick_emotions(vectors, requested, minimum: int = 1) -> list[str]:
    """The requested emotions that ``vectors`` holds, in the requested order (a subset name such as
    ``"working12"`` is resolved first). If fewer than ``minimum`` are available, the vectors' own
    first emotions fill up, so a run with few vectors (the smoke profile) still exercises every path;
    notebooks print what was substituted."""
    from emolib.emotions import emotion_subset

    names = emotion_subset(requested) if isinstance(requested, str) else list(requested)
    have = [e for e in names if e in vectors.emotions]
    for e in vectors.emotions:
        if len(have) >= minimum:
            break
        if e not in have:
            have.append(e)
    return have


def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the final norm) from the base model, left padding honoured
    through mask-aware ``position_ids``; the LM head is applied later, only where needed."""
    dev = model_device(model)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = base_model(model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                            use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def lm_logits(model, h: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits (float32) from final hidden states."""
    return model.get_output_embeddings()(h).float()


def batches_by_key(n: int, key: Callable[[int], Any], lengths: Sequence[int],
                   batch_size: int) -> list[list[int]]:
    """Row indices grouped so each batch shares one ``key`` (e.g. a steering span), sorted by length
    inside a group to limit padding. Deterministic: the same rows and keys give the same batches,
    so a steered run and its baseline see identical padding (strength 0 is then bit-identical)."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i in range(n):
        groups[key(i)].append(i)
    out = []
    for k in sorted(groups, key=repr):
        rows = sorted(groups[k], key=lambda i: (lengths[i], i))
        out.extend(rows[j:j + batch_size] for j in range(0, len(rows), batch_size))
    return out


def last_token_logits(model, tokenizer, prompts: Sequence[Sequence[int]], steering: Steering | None = None,
                      scopes: Callable[[int], Sequence[Any]] | Sequence[Any] = ("all",),
                      batch_size: int = 16) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` (float32) after each prompt, optionally steered, in input order.

    ``scopes`` is a list of steering scopes for every row, or a function ``row -> scopes``; rows
    with different scopes go to different batches. Only the last position goes through the LM head.
    """
    n = len(prompts)
    scope_of = scopes if callable(scopes) else (lambda _i: tuple(scopes))
    pad = pad_id_of(tokenizer)
    rows_out: list[torch.Tensor | None] = [None] * n
    with torch.inference_mode():
        for rows in batches_by_key(n, lambda i: tuple(scope_of(i)), [len(p) for p in prompts], batch_size):
            ids, mask = pad_left([prompts[i] for i in rows], pad)
            with apply_steering(model, steering, scope_of(rows[0])):
                h = hidden_states(model, ids, mask)[:, -1]
            logits = lm_logits(model, h).cpu()
            for j, i in enumerate(rows):
                rows_out[i] = logits[j]
    return torch.stack(rows_out)  # type: ignore[arg-type]


def conditions_logprobs(model, prompt: Sequence[int], span: tuple[int, int], steerings: Sequence[Steering | None],
                        continuations: Sequence[Sequence[int]], rows: int = 64) -> torch.Tensor:
    """``[len(steerings), len(continuations)]``: log-probability of each continuation (its tokens' log-probs
    summed, full-vocabulary softmax) after one ``prompt``, under each steering in turn, applied to the
    prompt positions ``[span[0], span[1])``; None is the unsteered baseline. The continuation itself is
    not steered, as in :func:`sequence_logprobs` with the same span.

    Why not :func:`last_token_logits` once per condition: a sweep (171 emotions x strengths x random
    and shuffled controls) asks the same few prompts hundreds of times, and everything before
    ``span[0]`` (system and user turn) is the same in every condition. So that prefix runs once, its
    key/value cache is shared, and only the steered tail (the assistant header and prefill, a handful
    of tokens) runs, ``rows`` at a time side by side, one condition per batch row
    (:func:`emolib.steering.steer_rows`). One row per condition reads every one-token continuation at
    the last position; a continuation of several tokens gets a row of its own per condition. The
    result equals steering each condition alone up to floating-point rounding (tested); compare
    conditions with a baseline from this same function.
    """
    start, stop = int(span[0]), int(span[1])
    prompt = list(prompt)
    conts = [list(c) for c in continuations]
    if not 0 <= start < stop <= len(prompt):
        raise ValueError(f"Steering span {span} does not lie inside the prompt's {len(prompt)} tokens.")
    if any(len(c) == 0 for c in conts):
        raise ValueError("An empty continuation has no probability to read.")
    single = [j for j, c in enumerate(conts) if len(c) == 1]
    multi = [j for j, c in enumerate(conts) if len(c) > 1]
    first = torch.as_tensor([conts[j][0] for j in single], dtype=torch.long)
    # one row per (condition, None = the last position; j = continuation j's own row)
    specs = [(s, j) for s in range(len(steerings)) for j in ([None] if single else []) + multi]
    tail = prompt[start:]
    dev = model_device(model)
    base = base_model(model)
    out = torch.zeros(len(steerings), len(conts))
    prefix_cache = None
    with torch.inference_mode():
        if start > 0:
            ids = torch.tensor([prompt[:start]], device=dev)
            pre = base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            prefix_cache = getattr(pre, "cache", None) or getattr(pre, "past_key_values", None)
        for lo in range(0, len(specs), rows):
            chunk = specs[lo:lo + rows]
            seqs = [tail + (conts[j][:-1] if j is not None else []) for _, j in chunk]
            width = max(len(q) for q in seqs)
            # right padding: causal attention keeps the pads out of every position that is read
            ids = torch.tensor([q + [q[-1]] * (width - len(q)) for q in seqs], device=dev)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(chunk))
            mask = torch.ones(len(chunk), start + width, dtype=torch.long, device=dev)
            with steer_rows(model, [steerings[s] for s, _ in chunk], scope=(start, stop)):
                h = base(input_ids=ids, attention_mask=mask, cache=cache, use_cache=cache is not None)
            h = h.last_hidden_state if hasattr(h, "last_hidden_state") else h[0]
            main = [r for r, (_, j) in enumerate(chunk) if j is None]
            if main:  # one LM-head call for every condition's last position
                lp = torch.log_softmax(lm_logits(model, h[main, len(tail) - 1]), dim=-1).cpu()
                conds = torch.as_tensor([chunk[r][0] for r in main])
                out[conds.unsqueeze(1), torch.as_tensor(single).unsqueeze(0)] = lp[:, first]
            for r, (s, j) in enumerate(chunk):
                if j is not None:
                    k = len(conts[j])
                    pos = torch.arange(len(tail) - 1, len(tail) - 1 + k, device=h.device)
                    lp = torch.log_softmax(lm_logits(model, h[r, pos]), dim=-1).cpu()
                    out[s, j] = lp[torch.arange(k), torch.as_tensor(conts[j])].sum()
    return out


def option_logprobs(logits: torch.Tensor, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Log-probabilities (full-vocabulary softmax) of each row's option tokens: ``[n, k]``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    idx = torch.as_tensor([list(t) for t in token_ids], dtype=torch.long)
    return lp.gather(1, idx)


def sequence_logprobs(model, tokenizer, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      steering: Steering | None = None,
                      scopes: Callable[[int], Sequence[Any]] | Sequence[Any] = ("all",),
                      batch_size: int = 16) -> torch.Tensor:
    """Sum of log-probabilities of each continuation after its prompt (multi-token words summed).

    Only the positions that predict continuation tokens go through the LM head.
    """
    n = len(prompts)
    if len(continuations) != n:
        raise ValueError(f"{n} prompts but {len(continuations)} continuations.")
    scope_of = scopes if callable(scopes) else (lambda _i: tuple(scopes))
    pad = pad_id_of(tokenizer)
    full = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    out = torch.zeros(n, dtype=torch.float32)
    head = model.get_output_embeddings()
    with torch.inference_mode():
        for rows in batches_by_key(n, lambda i: tuple(scope_of(i)), [len(f) for f in full], batch_size):
            ids, mask = pad_left([full[i] for i in rows], pad)
            with apply_steering(model, steering, scope_of(rows[0])):
                h = hidden_states(model, ids, mask)
            width = ids.shape[1]
            for j, i in enumerate(rows):
                k = len(continuations[i])
                pos = torch.arange(width - k - 1, width - 1)  # positions predicting the continuation
                lp = torch.log_softmax(head(h[j, pos]).float(), dim=-1)
                tgt = torch.as_tensor(list(continuations[i]))
                out[i] = lp[torch.arange(k), tgt].sum()
    return out


def option_probs(option_lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities renormalised over the options [n, k], probability mass on the options [n])``.

    The mass says whether the model reads the format at all: near 0, the A/B comparison is noise.
    """
    ### BEGIN SOLUTION
    return torch.softmax(option_lp, dim=-1), option_lp.exp().sum(-1)
    ### END SOLUTION


def reply_logprobs(model, tokenizer, users: Sequence[str], replies: Sequence[str], steering: Steering | None = None,
                   batch_size: int = 16, system: str | None = None) -> torch.Tensor:
    """``[users, replies]`` log-probability of each whole reply as the assistant's first words after each user
    message, with ``steering`` (if any) on the assistant turn from its header on, replies included (as it
    would be while the model wrote them). For read-outs such as "does steering make 'I'm sorry' likelier?"."""
    prompts, conts, starts = [], [], []
    for u in users:
        cp = build_prompt(tokenizer, u, system=system)
        for r in replies:
            try:
                ids = continuation_ids(tokenizer, cp, r)
            except ValueError:
                ids = continuation_ids(tokenizer, cp, " " + r)
            prompts.append(cp.ids)
            conts.append(ids)
            starts.append(cp.spans["assistant"][0])
    lp = sequence_logprobs(model, tokenizer, prompts, conts, steering, scopes=lambda i: (starts[i],),
                           batch_size=batch_size)
    return lp.view(len(users), len(replies))


def greedy_reply(model, tokenizer, user: str, steering: Steering | None = None, max_new_tokens: int = 24,
                 system: str | None = None) -> str:
    """The model's greedy reply to one user message, with ``steering`` (if any) on the whole assistant turn
    (header and every generated token). Greedy, so a sample shown beside a number is reproducible."""
    cp = build_prompt(tokenizer, user, system=system)
    ids = torch.tensor([cp.ids], device=model_device(model))
    with torch.inference_mode(), apply_steering(model, steering, (cp.spans["assistant"][0],)):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(cp.ids):], skip_special_tokens=True)
