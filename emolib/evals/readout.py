"""Shared machinery of the causal experiments: chat prompts with named token spans, batched scoring
under steering, and the option-letter (A/B) read-out.

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

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture import pad_id_of, pad_left  # noqa: F401  (re-exported for callers)
from ..models import base_model, model_device
from ..steering import steer

# ---- chat prompts with spans -----------------------------------------------------------------


@dataclass
class ChatPrompt:
    """A chat-formatted prompt as token ids, with named token spans ``[start, stop)``.

    ``spans`` always holds ``"user"`` (the user message's tokens), ``"assistant"`` (from the start
    of the assistant header to the end, prefill included) and ``"prefill"`` (the prefill's tokens;
    empty when there is none), plus any ``marks`` asked for by name.
    """

    text: str
    ids: list[int]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer, user: str, prefill: str = "", system: str | None = None) -> tuple[str, dict[str, tuple[int, int]]]:
    """The prompt as text and the character spans of the user message, assistant turn and prefill.

    With a chat template the template decides the format (a default system prompt included, if the
    template has one); without one (plain LMs, test tokenizers) ``Human: ...`` / ``Assistant:`` is used,
    the format of the paper.
    """
    if has_chat_template(tokenizer):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        head = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if not full.startswith(head):  # unusual template: fall back to locating the user text only
            head = full[: full.rfind(user) + len(user)]
        text = full + prefill
        a_start = len(head)
    else:
        sys_part = f"{system}\n\n" if system else ""
        head = f"{sys_part}Human: {user}\n\n"
        text = head + "Assistant:" + ((" " + prefill) if prefill else "")
        a_start = len(head)
    u0 = text.rfind(user, 0, a_start)
    if u0 < 0:
        raise ValueError("The chat template altered the user message; cannot locate it in the prompt.")
    p0 = len(text) - len(prefill)
    return text, {"user": (u0, u0 + len(user)), "assistant": (a_start, len(text)), "prefill": (p0, len(text))}


def encode(tokenizer, text: str, chat: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets; a chat-templated text already carries its special tokens."""
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ValueError("This tokenizer gives no offset mapping; a fast (Rust) tokenizer is needed to find spans.")
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> tuple[int, int]:
    """Token span ``[a, b)`` of the tokens that overlap characters ``[start, stop)``.

    Special tokens (empty offsets) never count. An empty character span gives an empty token span
    placed where it would start.
    """
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and b > start and a < stop]
    if not hits:
        after = [i for i, (a, b) in enumerate(offsets) if b > a and a >= stop]
        pos = after[0] if after else len(offsets)
        return pos, pos
    return hits[0], hits[-1] + 1


def build_prompt(tokenizer, user: str, prefill: str = "", system: str | None = None,
                 marks: Mapping[str, str] | None = None,
                 mark_spans: Mapping[str, tuple[int, int]] | None = None) -> ChatPrompt:
    """Format ``user`` (+ ``prefill``) and record token spans; ``marks`` maps a name to a substring of
    the user message (its first occurrence) whose token span is wanted, e.g. an activity;
    ``mark_spans`` maps a name to character offsets ``[start, stop)`` inside the user message."""
    chat = has_chat_template(tokenizer)
    text, cspans = chat_text(tokenizer, user, prefill, system)
    ids, offsets = encode(tokenizer, text, chat)
    spans = {name: char_to_token_span(offsets, *cs) for name, cs in cspans.items()}
    if cspans["prefill"][0] == cspans["prefill"][1]:
        spans["prefill"] = (len(ids), len(ids))
    u0 = cspans["user"][0]
    for name, sub in (marks or {}).items():
        at = text.find(sub, u0, cspans["user"][1])
        if at < 0:
            raise ValueError(f"Mark {name!r}: {sub!r} does not occur in the user message.")
        spans[name] = char_to_token_span(offsets, at, at + len(sub))
    for name, (a, b) in (mark_spans or {}).items():
        if not 0 <= a <= b <= len(user):
            raise ValueError(f"Mark {name!r}: characters [{a}, {b}) fall outside the user message.")
        spans[name] = char_to_token_span(offsets, u0 + a, u0 + b)
    return ChatPrompt(text=text, ids=ids, spans=spans)


def continuation_ids(tokenizer, prompt: ChatPrompt, continuation: str) -> list[int]:
    """Token ids of ``continuation`` as they follow ``prompt`` when the two are tokenized together.

    Raises when the prompt's own tokens change (a merge across the boundary), because then the
    continuation's probability cannot be read as a product of next-token probabilities.
    """
    chat = has_chat_template(tokenizer)
    ids, _ = encode(tokenizer, prompt.text + continuation, chat)
    if ids[: len(prompt.ids)] != prompt.ids:
        raise ValueError(f"Appending {continuation!r} re-tokenizes the end of the prompt; choose a prefill that "
                         "ends at a token boundary (e.g. a word, with the continuation starting with a space).")
    rest = ids[len(prompt.ids):]
    if not rest:
        raise ValueError(f"{continuation!r} adds no tokens.")
    return rest


# ---- option letters -----------------------------------------------------------------------------


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
    chat = has_chat_template(tokenizer)
    tried = []
    for prefill, merged in ((opener, False), ("", True)):
        base, _ = encode(tokenizer, chat_text(tokenizer, user, prefill, system)[0], chat)
        ids = []
        for letter in letters:
            # the whole reply as the format writes it (e.g. "Assistant: (A"), so separators are right
            full, _ = encode(tokenizer, chat_text(tokenizer, user, opener + letter, system)[0], chat)
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


# ---- steering specification -----------------------------------------------------------------------


@dataclass
class Steering:
    """One intervention: a direction (one ``[width]`` vector, or ``layer -> [width]``) added at
    ``layers`` with ``strength`` in units of the mean residual norm (``norms``: ``layer -> norm``)."""

    vector: torch.Tensor | Mapping[int, torch.Tensor]
    layers: list[int]
    strength: float
    norms: Mapping[int, float]
    label: str = ""

    def scaled(self, strength: float) -> Steering:
        return Steering(self.vector, list(self.layers), float(strength), self.norms, self.label)


def emotion_steering(vectors, emotion: str | torch.Tensor, layers: Sequence[int] | int | None,
                     strength: float, label: str | None = None) -> Steering:
    """A :class:`Steering` from an :class:`~emolib.vectors.EmotionVectors`: an emotion name (its vector
    at each layer) or a raw direction (the same at each layer), with the artifact's per-layer norms."""
    if layers is None:
        layers = [vectors.default_layer]
    if isinstance(layers, int):
        layers = [layers]
    layers = [int(x) for x in layers]
    norms = {layer: vectors.norm_at(layer) for layer in layers}
    if isinstance(emotion, str):
        vec = {layer: vectors.vector(emotion, layer) for layer in layers}
        name = emotion
    else:
        vec = torch.as_tensor(emotion, dtype=torch.float32)
        name = label or "direction"
    return Steering(vec, layers, float(strength), norms, label or name)


def pick_emotions(vectors, requested, minimum: int = 1) -> list[str]:
    """The requested emotions that ``vectors`` holds, in the requested order (a subset name such as
    ``"working12"`` is resolved first). If fewer than ``minimum`` are available, the vectors' own
    first emotions fill up, so a run with few vectors (the smoke profile) still exercises every path;
    notebooks print what was substituted."""
    from ..emotions import emotion_subset

    names = emotion_subset(requested) if isinstance(requested, str) else list(requested)
    have = [e for e in names if e in vectors.emotions]
    for e in vectors.emotions:
        if len(have) >= minimum:
            break
        if e not in have:
            have.append(e)
    return have


@contextmanager
def apply_steering(model, steering: Steering | None, scopes: Sequence[Any] = ("all",)) -> Iterator[None]:
    """Steer with ``steering`` on each scope in ``scopes`` (one :func:`steer` block per scope, nested,
    so disjoint spans each get the vector once); ``None`` or no scopes means no intervention."""
    with ExitStack() as stack:
        if steering is not None:
            for scope in scopes:
                stack.enter_context(steer(model, steering.vector, steering.layers, steering.strength,
                                          norms=steering.norms, scope=scope))
        yield


# ---- batched scoring ----------------------------------------------------------------------------------


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
