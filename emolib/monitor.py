"""Per-token emotion monitoring: read a conversation (or a generation, live) through the emotion
vectors, and raise alerts when an emotion leaves the range it keeps on neutral text.

The paper ran its probes over finished transcripts and proposed, without building it, a real-time
monitor that flags extreme desperation or anger for extra scrutiny (STUDY.md section 7). This
module is that monitor, in three pieces:

* **Scores.** At each token, the block output ``h`` at each monitored layer ``L`` is read,
  the vectors' grand mean is subtracted, and it is projected on every emotion's unit vector,
  divided by the layer's mean residual norm (so a score is a fraction of a typical activation's
  size and layers can be averaged): ``score_e = mean_L ((h_L - c_L) . v_e,L / |v_e,L|) / norm_L``.
  All emotions are one matrix product per layer and token batch. Token-level signals are noisy
  (the paper says so too), so a *causal* moving average over ``window`` tokens is applied: a
  token's smoothed score depends only on it and the tokens before it, so live and offline
  scores agree and an alert never uses text that has not been written yet.
* **Live scoring.** :meth:`Monitor.watch` attaches forward hooks (inside a ``with`` block only)
  that score every token as the model reads it, during ``generate`` or any forward call, and hand
  each token's scores to a callback. A sampled token is read -- and so scored -- on the next
  decoding step, i.e. before the token after it is drawn; :meth:`Monitor.generate` runs one extra
  cached step at the end so the last token is scored too. Tests check that live scores equal the
  scores of the finished text within 1e-4.
* **Alerts calibrated on neutral text.** :meth:`Monitor.calibrate` scores emotionally neutral
  Human/Assistant dialogues and keeps, per emotion, a grid of percentiles plus mean and standard
  deviation. A rule such as ``"desperate > p99 for 3"`` fires when the smoothed desperate score
  stays above its neutral 99th percentile for 3 consecutive tokens; each :class:`Alert` records the
  token where it fired (the k-th token of the run) and where the run began. No threshold is a
  hand-picked number.

Conversations are chat messages (``[{"role": ..., "content": ...}]``); :func:`encode_chat` renders
them with the tokenizer's chat template and gives every token its role and turn (the template's
own default system prompt, if it injects one, is role ``"system"``, turn ``-1``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .capture import PerDevice, _block_output, _resolve_layers, tag, token_activations
from .models import base_model, find_layers, model_device
from .vectors import EmotionVectors

PERCENTILES = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9)


# ---- conversations as tokens with roles ---------------------------------------------------------


@dataclass
class ChatTokens:
    """A conversation as token ids, each token with its text piece, role, turn and content flag.

    ``turn`` is the index of the message a token belongs to (its template header included; the
    template's injected default system prompt is turn ``-1``); ``content`` is True for tokens inside
    a message's own text (False for template tokens such as ``<|im_start|>assistant``).
    Generated tokens are appended with :meth:`append` and belong to ``gen_role`` / ``gen_turn``.
    """

    text: str
    ids: list[int]
    tokens: list[str]
    roles: list[str]
    turns: list[int]
    content: list[bool]
    offsets: list[tuple[int, int]]
    messages: list[dict[str, str]] = field(default_factory=list)
    gen_role: str = "assistant"
    gen_turn: int = 0
    prompt_len: int = 0
    _gen_ids: list[int] = field(default_factory=list, repr=False)
    _gen_text: str = field(default="", repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def generated_text(self) -> str:
        return self._gen_text

    def append(self, token_id: int, tokenizer) -> str:
        """Add one generated token; returns its text piece (decoded incrementally, so multi-byte
        characters split over tokens come out right once complete)."""
        self._gen_ids.append(int(token_id))
        full = tokenizer.decode(self._gen_ids, skip_special_tokens=False)
        piece = full[len(self._gen_text):] if full.startswith(self._gen_text) else full
        start = len(self.text)
        self.text += piece
        self._gen_text = full
        self.ids.append(int(token_id))
        self.tokens.append(piece)
        self.roles.append(self.gen_role)
        self.turns.append(self.gen_turn)
        self.content.append(True)
        self.offsets.append((start, len(self.text)))
        return piece

    def turn_starts(self) -> list[tuple[int, int, str]]:
        """``(token index, turn, role)`` at the first token of each turn."""
        out = []
        for i, (t, r) in enumerate(zip(self.turns, self.roles)):
            if i == 0 or t != self.turns[i - 1]:
                out.append((i, t, r))
        return out

    def find(self, needle: str, start_char: int = 0) -> int | None:
        """Index of the token where ``needle`` first begins in the text (None if absent)."""
        pos = self.text.find(needle, start_char)
        if pos < 0:
            return None
        for i, (a, b) in enumerate(self.offsets):
            if a <= pos < b or a >= pos:
                return i
        return None


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages, add_generation_prompt: bool = False, continue_final: bool = False) -> str:
    if not has_chat_template(tokenizer):
        parts = []
        for m in messages:
            tagname = {"user": "Human", "assistant": "Assistant"}.get(m["role"])
            parts.append(f"{tagname}: {m['content']}" if tagname else m["content"])
        text = "\n\n".join(parts)
        if continue_final:
            return text
        if add_generation_prompt:
            text += "\n\nAssistant:"
        return text
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final)


def _turn_bounds(tokenizer, messages, full: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Character position where each message's turn starts, and each message's content span.

    A turn starts at its template header. For message ``i >= 1`` that is the length of the
    rendering of ``messages[:i]`` (templates render a conversation prefix as a text prefix). For
    message 0 the header is learnt by rendering it followed by a marker message of the same role,
    so a default system prompt the template injects before it is told apart from the header.
    Anything unusual falls back to the start of the message's content.
    """
    spans, cursor = [], 0
    for m in messages:
        pos = full.find(m["content"], cursor) if m["content"] else cursor
        if pos < 0:
            raise ValueError(f"The chat template altered a {m['role']} message; cannot locate it in the text.")
        spans.append((pos, pos + len(m["content"])))
        cursor = pos + len(m["content"])
    starts = []
    for i, m in enumerate(messages):
        start = spans[i][0]
        if i >= 1:
            try:
                prefix = _render(tokenizer, messages[:i])
                if full.startswith(prefix) and len(prefix) <= spans[i][0]:
                    start = len(prefix)
            except Exception:  # noqa: BLE001 - templates may refuse some prefixes (e.g. role order)
                pass
        elif not has_chat_template(tokenizer):
            start = 0
        else:
            try:
                marker = "\x00emolib-marker\x00"
                one = _render(tokenizer, messages[:1])
                two = _render(tokenizer, [messages[0], {"role": m["role"], "content": marker}])
                if two.startswith(one):
                    header = two[len(one):two.index(marker)]
                    head_end = spans[0][0]
                    if header and full[:head_end].endswith(header):
                        start = head_end - len(header)
            except Exception:  # noqa: BLE001
                pass
        starts.append(start)
    return starts, spans


def _message(i: int, m) -> dict[str, str]:
    """One chat message as ``{"role", "content"}``, or a ValueError saying which message is wrong."""
    if not isinstance(m, dict):
        raise ValueError(f"Message {i} is a {type(m).__name__}; a message is a dict with 'role' and 'content'.")
    missing = [k for k in ("role", "content") if k not in m]
    if missing:
        raise ValueError(f"Message {i} has no {' and no '.join(repr(k) for k in missing)}: {str(m)[:80]}")
    return {"role": str(m["role"]), "content": str(m["content"])}


def offset_pieces(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The text piece of each token, every character given to the first token that covers it.

    Byte-level tokenizers split a multi-byte character (我) over several tokens that all report
    the same character span; slicing each span would show the character once per token.
    """
    out, done = [], 0
    for a, b in offsets:
        a = max(a, done)
        out.append(text[a:b] if b > a else "")
        done = max(done, b)
    return out


def encode_chat(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool | None = None,
                continue_final_message: bool | None = None) -> ChatTokens:
    """Render ``messages`` with the chat template and label every token with its role and turn.

    By default a conversation ending on a user (or system) message gets the assistant header
    appended (``add_generation_prompt``), and one ending on an assistant message is left open
    for the model to continue (``continue_final_message``) -- so the result is ready for
    ``generate``. Pass both as False to score a finished transcript exactly as written.
    """
    messages = [_message(i, m) for i, m in enumerate(messages)]
    if not messages:
        raise ValueError("A conversation needs at least one message.")
    last_is_assistant = messages[-1]["role"] == "assistant"
    if continue_final_message is None:
        continue_final_message = last_is_assistant
    if add_generation_prompt is None:
        add_generation_prompt = not last_is_assistant
    if continue_final_message and add_generation_prompt:
        raise ValueError("Choose add_generation_prompt or continue_final_message, not both.")
    full = _render(tokenizer, messages, add_generation_prompt, continue_final_message)
    starts, spans = _turn_bounds(tokenizer, messages, full)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    n = len(messages)
    gen_turn = n - 1 if continue_final_message else n
    gen_start = len(_render(tokenizer, messages)) if add_generation_prompt else len(full)
    roles, turns, content = [], [], []
    for a, b in offsets:
        turn = -1
        for i in range(n):
            if a >= starts[i]:
                turn = i
        if add_generation_prompt and a >= gen_start and gen_start < len(full):
            turn = n
        role = "system" if turn < 0 else ("assistant" if turn == n else messages[turn]["role"])
        roles.append(role)
        turns.append(turn)
        content.append(0 <= turn < n and spans[turn][0] <= a < max(spans[turn][1], spans[turn][0] + 1) and b > a)
    tokens = offset_pieces(full, offsets)
    return ChatTokens(text=full, ids=ids, tokens=tokens, roles=roles, turns=turns, content=content,
                      offsets=offsets, messages=messages, gen_role="assistant", gen_turn=gen_turn,
                      prompt_len=len(ids), _gen_text="")


_TAG = re.compile(r"^(Human|Assistant|Person|AI|User):[ \t]?", re.MULTILINE)


def dialogue_messages(text: str) -> list[dict[str, str]]:
    """Split a ``Human: ... / Assistant: ...`` dialogue (the paper's format, our neutral corpus)
    into chat messages; untagged text before the first turn becomes a system message."""
    parts = _TAG.split(text)
    msgs = []
    head = parts[0].strip()
    if head:
        msgs.append({"role": "system", "content": head})
    for tagname, body in zip(parts[1::2], parts[2::2]):
        role = "user" if tagname in {"Human", "Person", "User"} else "assistant"
        msgs.append({"role": role, "content": body.strip()})
    if not any(m["role"] != "system" for m in msgs):
        raise ValueError("No 'Human:' / 'Assistant:' turns found in the dialogue.")
    return msgs


# ---- smoothing and alert logic (pure functions) ---------------------------------------------


def causal_smooth(raw: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of each token's score and the ``window - 1`` before it, ignoring NaN (``[T, E]``).

    Causal on purpose: the smoothed score of token ``t`` never looks at tokens after ``t``, so
    the live path (which has not seen them yet) computes exactly the same number.
    """
    if window <= 1:
        return raw.clone()
    pad = torch.full((window - 1, raw.shape[1]), math.nan, dtype=raw.dtype)
    x = torch.cat([pad, raw], dim=0)  # [T + w - 1, E]
    win = x.unfold(0, window, 1)  # [T, E, w], oldest first
    return torch.nanmean(win, dim=-1)


@dataclass(frozen=True)
class AlertRule:
    """"``emotion`` above (or below) its neutral ``percentile`` for ``k`` consecutive tokens".

    ``roles`` restricts the tokens the rule watches (None: all). Written and parsed as text:
    ``"desperate > p99 for 3"``, ``"calm < p1 for 5 [assistant]"``.
    """

    emotion: str
    above: bool
    percentile: float
    k: int = 3
    roles: tuple[str, ...] | None = None

    _RX = re.compile(r"^\s*(?P<emo>[A-Za-z][A-Za-z \-]*?)\s*(?P<op>[<>])\s*p(?P<pct>\d+(?:\.\d+)?)"
                     r"\s*(?:for\s*(?P<k>\d+))?\s*(?:\[(?P<roles>[a-z, ]+)\])?\s*$")

    @classmethod
    def parse(cls, text: str | AlertRule) -> AlertRule:
        if isinstance(text, AlertRule):
            return text
        m = cls._RX.match(text)
        if not m:
            raise ValueError(f"Cannot read the alert rule {text!r}; write e.g. 'desperate > p99 for 3' "
                             "or 'calm < p1 for 5 [assistant]'.")
        roles = tuple(r.strip() for r in m["roles"].split(",") if r.strip()) if m["roles"] else None
        k = int(m["k"]) if m["k"] else 1
        if k < 1:
            raise ValueError(f"k must be >= 1 in {text!r}.")
        return cls(emotion=m["emo"].strip(), above=m["op"] == ">", percentile=float(m["pct"]), k=k, roles=roles)

    def __str__(self) -> str:
        pct = f"{self.percentile:g}"
        roles = f" [{','.join(self.roles)}]" if self.roles else ""
        return f"{self.emotion} {'>' if self.above else '<'} p{pct} for {self.k}{roles}"


@dataclass
class Alert:
    """One firing of a rule: ``token_index`` is where it fired (the k-th token of the run),
    ``run_start`` where the run of out-of-range tokens began."""

    rule: str
    emotion: str
    token_index: int
    run_start: int
    value: float
    threshold: float
    token: str = ""
    role: str = ""
    turn: int = -1
    above: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunTracker:
    """Incremental "k consecutive tokens beyond a threshold" detector, one token at a time.

    Fires once per run (on its k-th token) and re-arms when the run breaks. A token the rule does
    not watch (wrong role) or without a score (NaN) breaks the run. The batch function
    :func:`scan_alerts` uses this same object, so live and offline alerts cannot disagree.
    """

    def __init__(self, threshold: float, above: bool, k: int) -> None:
        self.threshold, self.above, self.k = float(threshold), bool(above), int(k)
        self.run = 0
        self.start = -1
        self.fired = False

    def step(self, t: int, value: float, watched: bool = True) -> int | None:
        """Feed token ``t``; returns the run's start index if the rule fires at ``t``, else None."""
        hit = watched and math.isfinite(value) and (value > self.threshold if self.above else value < self.threshold)
        if not hit:
            self.run, self.fired = 0, False
            return None
        if self.run == 0:
            self.start = t
        self.run += 1
        if self.run >= self.k and not self.fired:
            self.fired = True
            return self.start
        return None


def scan_alerts(values: Sequence[float] | torch.Tensor, threshold: float, above: bool, k: int,
                watched: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """All ``(fired_at, run_start)`` pairs of a rule over one trace of values."""
    vals = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    tracker = RunTracker(threshold, above, k)
    out = []
    for t, v in enumerate(vals):
        s = tracker.step(t, v, True if watched is None else bool(watched[t]))
        if s is not None:
            out.append((t, s))
    return out


# ---- calibration on neutral text -------------------------------------------------------------


@dataclass
class Calibration:
    """Per-emotion distribution of smoothed scores on neutral dialogues.

    ``values[p, e]`` is the ``percentiles[p]``-th percentile of emotion ``e``; ``mean`` / ``std``
    give z-scores. ``layers`` and ``window`` must match the monitor that uses it (checked).
    """

    emotions: list[str]
    percentiles: list[float]
    values: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    layers: list[int]
    window: int
    n_tokens: int
    n_dialogues: int
    meta: dict[str, Any] = field(default_factory=dict)

    def threshold(self, emotion: str, percentile: float) -> float:
        if emotion not in self.emotions:
            raise KeyError(f"The calibration has no emotion {emotion!r}.")
        hits = [i for i, p in enumerate(self.percentiles) if abs(p - percentile) < 1e-9]
        if not hits:
            raise ValueError(f"Percentile {percentile:g} was not calibrated; available: "
                             f"{', '.join(f'{p:g}' for p in self.percentiles)}.")
        return float(self.values[hits[0], self.emotions.index(emotion)])

    def z(self, scores: torch.Tensor, emotions: Sequence[str] | None = None) -> torch.Tensor:
        """``(scores - neutral mean) / neutral std`` for ``[..., E]`` scores in ``emotions`` order."""
        idx = [self.emotions.index(e) for e in (emotions or self.emotions)]
        return (scores - self.mean[idx]) / self.std[idx].clamp_min(1e-8)

    def to_dict(self) -> dict[str, Any]:
        return {"emotions": self.emotions, "percentiles": self.percentiles, "values": self.values.tolist(),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "layers": self.layers, "window": self.window,
                "n_tokens": self.n_tokens, "n_dialogues": self.n_dialogues, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(emotions=d["emotions"], percentiles=[float(p) for p in d["percentiles"]],
                   values=torch.tensor(d["values"], dtype=torch.float32), mean=torch.tensor(d["mean"]),
                   std=torch.tensor(d["std"]), layers=[int(x) for x in d["layers"]], window=int(d["window"]),
                   n_tokens=int(d["n_tokens"]), n_dialogues=int(d["n_dialogues"]), meta=d.get("meta", {}))


# ---- traces ------------------------------------------------------------------------------------


@dataclass
class MonitorTrace:
    """Scores of one conversation: ``raw`` and ``scores`` (smoothed) are ``[T, E]`` float32,
    NaN on the first ``skip_first`` tokens (the attention sink), plus the alerts that fired."""

    chat: ChatTokens
    emotions: list[str]
    raw: torch.Tensor
    scores: torch.Tensor
    layers: list[int]
    window: int
    alerts: list[Alert] = field(default_factory=list)
    calibration: Calibration | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def z(self) -> torch.Tensor:
        """Smoothed scores as z-scores against the neutral calibration (``[T, E]``)."""
        if self.calibration is None:
            raise ValueError("This trace has no calibration; call Monitor.calibrate first.")
        return self.calibration.z(self.scores, self.emotions)

    def series(self, emotion: str, kind: str = "score") -> torch.Tensor:
        i = _index(self.emotions, emotion)
        src = {"score": self.scores, "raw": self.raw}.get(kind)
        if kind == "z":
            src = self.z()
        if src is None:
            raise ValueError(f"kind must be 'score', 'raw' or 'z', got {kind!r}")
        return src[:, i]

    def wide(self, emotions: Sequence[str] | None = None, kind: str = "score"):
        """One row per token: token_index, token, role, turn, content, then one column per emotion."""
        import pandas as pd

        ems = list(emotions) if emotions is not None else self.emotions
        df = pd.DataFrame({"token_index": range(len(self)), "token": self.chat.tokens[:len(self)],
                           "role": self.chat.roles[:len(self)], "turn": self.chat.turns[:len(self)],
                           "content": self.chat.content[:len(self)]})
        for e in ems:
            df[e] = self.series(e, kind).numpy()
        return df

    def frame(self, emotions: Sequence[str] | None = None):
        """The tidy table: one row per (token, emotion) with token_index, token, role, turn,
        emotion, score (smoothed), raw, and z (if calibrated)."""
        import numpy as np
        import pandas as pd

        ems = list(emotions) if emotions is not None else self.emotions
        idx = [_index(self.emotions, e) for e in ems]
        T, E = len(self), len(idx)
        out = {
            "token_index": np.repeat(np.arange(T), E),
            "token": np.repeat(np.array(self.chat.tokens[:T], dtype=object), E),
            "role": np.repeat(np.array(self.chat.roles[:T], dtype=object), E),
            "turn": np.repeat(np.array(self.chat.turns[:T]), E),
            "emotion": np.tile(np.array(ems, dtype=object), T),
            "score": self.scores[:, idx].reshape(-1).numpy(),
            "raw": self.raw[:, idx].reshape(-1).numpy(),
        }
        if self.calibration is not None:
            out["z"] = self.z()[:, idx].reshape(-1).numpy()
        return pd.DataFrame(out)

    def alerts_frame(self):
        import pandas as pd

        cols = ["rule", "emotion", "token_index", "run_start", "value", "threshold", "token", "role", "turn", "above"]
        return pd.DataFrame([a.to_dict() for a in self.alerts], columns=cols)


def _index(names: Sequence[str], name: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        import difflib

        close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
        raise KeyError(f"Unknown emotion {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else "")) from None


# ---- the monitor -----------------------------------------------------------------------------


TokenCallback = Callable[["TokenEvent"], Any]


@dataclass
class TokenEvent:
    """What the live callback receives for each token as the model reads it."""

    index: int
    token_id: int
    token: str
    role: str
    turn: int
    generated: bool
    scores: torch.Tensor  # smoothed, [E]
    raw: torch.Tensor  # [E]
    alerts: list[Alert]
    emotions: list[str]

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        vals, idx = torch.topk(torch.nan_to_num(self.scores, nan=-math.inf), min(n, len(self.emotions)))
        return [(self.emotions[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())]


@dataclass
class Monitor:
    """Emotion monitor over ``vectors`` at ``layers`` (default: the vectors' default layer).

    ``window`` is the causal smoothing width in tokens; ``skip_first`` tokens at the start of a
    sequence get no score (the first token is the attention sink, whose huge norm gives extreme,
    meaningless projections); ``emotions`` restricts the monitored set (default: all);
    ``rules`` are alert rules (strings or :class:`AlertRule`), resolved against ``calibration``.
    """

    vectors: EmotionVectors
    layers: list[int] | int | None = None
    window: int = 5
    skip_first: int = 1
    emotions: list[str] | None = None
    rules: list[AlertRule | str] = field(default_factory=list)
    calibration: Calibration | None = None
    center: bool = True

    def __post_init__(self) -> None:
        if self.layers is None or self.layers == []:
            if self.vectors.default_layer is None:
                raise ValueError("The vectors have no default_layer; pass layers= to the Monitor.")
            self.layers = [int(self.vectors.default_layer)]
        elif isinstance(self.layers, int):
            self.layers = [self.layers]
        self.layers = [int(x) for x in self.layers]
        if self.window < 1:
            raise ValueError("window must be >= 1")
        vec = self.vectors.select(self.emotions) if self.emotions is not None else self.vectors
        self.emotions = list(vec.emotions)
        ws, bs = [], []
        for layer in self.layers:
            v = vec.at(layer)
            w = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T / max(vec.norm_at(layer), 1e-12)  # [W, E]
            ws.append(w.contiguous())
            c = vec.center[vec.layers.index(layer)] if (self.center and vec.center is not None) else None
            bs.append(c @ w if c is not None else torch.zeros(w.shape[1]))
        self._w = torch.stack(ws)  # [L, W, E]
        self._w_placed = [PerDevice(w) for w in self._w]  # live hooks: one copy per block device, made once
        self._bias = torch.stack(bs).mean(0)  # [E]
        self.rules = [AlertRule.parse(r) for r in self.rules]
        for r in self.rules:
            _index(self.emotions, r.emotion)

    # -- maths ----------------------------------------------------------------------------------
    def project(self, acts: torch.Tensor) -> torch.Tensor:
        """Raw scores ``[T, E]`` from per-layer activations ``[T, L, W]`` (one matmul per layer)."""
        a = acts.float()
        out = torch.zeros(a.shape[0], len(self.emotions))
        for i in range(len(self.layers)):
            out += a[:, i] @ self._w[i].to(a.device)
        return out / len(self.layers) - self._bias

    def thresholds(self) -> list[float]:
        """Each rule's threshold, read from the calibration."""
        if not self.rules:
            return []
        if self.calibration is None:
            raise ValueError("Alert rules need a calibration: call monitor.calibrate(model, tokenizer, neutral) first.")
        self._check_calibration(self.calibration)
        return [self.calibration.threshold(r.emotion, r.percentile) for r in self.rules]

    def _check_calibration(self, cal: Calibration) -> None:
        if cal.layers != self.layers or cal.window != self.window:
            raise ValueError(f"The calibration was made at layers {cal.layers}, window {cal.window}; this monitor "
                             f"uses layers {self.layers}, window {self.window}. Recalibrate.")

    def usable_rules(self, rules: Sequence[str | AlertRule], k: int = 3) -> list[AlertRule]:
        """The rules whose emotion this monitor has. If none is usable (a smoke vector set of a few
        emotions), one "above p99" and one "below p1" rule on its first emotions stand in, so
        every code path still runs."""
        parsed = [AlertRule.parse(r) for r in rules]
        usable = [r for r in parsed if r.emotion in self.emotions]
        if usable or not parsed:
            return usable
        first, second = self.emotions[0], self.emotions[min(1, len(self.emotions) - 1)]
        return [AlertRule(first, True, 99.0, k), AlertRule(second, False, 1.0, k)]

    # -- offline scoring ------------------------------------------------------------------------
    def check_model(self, model) -> None:
        """The vectors must live in this model's residual stream: same width, layers that exist."""
        width = int(model.config.hidden_size)
        if width != self.vectors.width:
            raise ValueError(f"The vectors have width {self.vectors.width} but the model's residual stream has width "
                             f"{width}: they were made for another model ({self.vectors.meta.get('model', '?')}).")
        _resolve_layers(model, self.layers)

    def _as_chat(self, tokenizer, conversation) -> ChatTokens:
        if isinstance(conversation, ChatTokens):
            return conversation
        if isinstance(conversation, str):
            conversation = dialogue_messages(conversation)
        return encode_chat(tokenizer, conversation, add_generation_prompt=False, continue_final_message=False)

    def score(self, model, tokenizer, conversation, max_tokens: int | None = None,
              with_alerts: bool = True) -> MonitorTrace:
        """Score a finished conversation (messages, a ``Human:/Assistant:`` string, or ``ChatTokens``)."""
        self.check_model(model)
        chat = self._as_chat(tokenizer, conversation)
        ids = chat.ids if max_tokens is None else chat.ids[:max_tokens]
        acts, _ = token_activations(model, tokenizer, layers=self.layers, input_ids=torch.tensor(ids))
        raw = self.project(acts)
        raw[: self.skip_first] = math.nan
        return self._finish(chat, raw, with_alerts)

    def _finish(self, chat: ChatTokens, raw: torch.Tensor, with_alerts: bool = True) -> MonitorTrace:
        scores = causal_smooth(raw, self.window)
        trace = MonitorTrace(chat=chat, emotions=list(self.emotions), raw=raw, scores=scores, layers=list(self.layers),
                             window=self.window, calibration=self.calibration)
        if with_alerts:
            trace.alerts = self.alerts(trace)
        return trace

    def alerts(self, trace: MonitorTrace) -> list[Alert]:
        """Every firing of every rule over a finished trace, in token order."""
        out = []
        for rule, thr in zip(self.rules, self.thresholds()):
            col = trace.scores[:, _index(trace.emotions, rule.emotion)]
            watched = [rule.roles is None or r in rule.roles for r in trace.chat.roles[:len(trace)]]
            for t, s in scan_alerts(col, thr, rule.above, rule.k, watched):
                out.append(self._alert(rule, thr, t, s, float(col[t]), trace.chat))
        return sorted(out, key=lambda a: (a.token_index, a.rule))

    @staticmethod
    def _alert(rule: AlertRule, thr: float, t: int, start: int, value: float, chat: ChatTokens) -> Alert:
        return Alert(rule=str(rule), emotion=rule.emotion, token_index=t, run_start=start, value=value, threshold=thr,
                     token=chat.tokens[t] if t < len(chat.tokens) else "", role=chat.roles[t] if t < len(chat.roles) else "",
                     turn=chat.turns[t] if t < len(chat.turns) else -1, above=rule.above)

    def calibrate(self, model, tokenizer, dialogues: Sequence, percentiles: Sequence[float] = PERCENTILES,
                  max_tokens: int | None = 1024, progress: bool = False) -> Calibration:
        """Score neutral dialogues and keep each emotion's percentiles, mean and std; sets
        ``self.calibration`` and returns it. Dialogues are messages, ``Human:/Assistant:`` strings
        or corpus records (dicts with a ``text`` field). Every scored token counts (template tokens
        too, as in monitored conversations), except the skipped first ones."""
        rows, n = [], 0
        items = list(dialogues)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, desc="calibrating", unit="dialogue")
        for d in items:
            conv = d["text"] if isinstance(d, dict) and "text" in d else d
            s = self.score(model, tokenizer, conv, max_tokens=max_tokens, with_alerts=False).scores
            rows.append(s[~torch.isnan(s).any(dim=1)])
            n += 1
        if not rows:
            raise ValueError("Calibration needs at least one neutral dialogue.")
        x = torch.cat(rows).double()
        if x.shape[0] < 2:
            raise ValueError("Calibration needs at least two scored tokens.")
        q = torch.tensor([p / 100 for p in percentiles], dtype=torch.float64)
        values = torch.quantile(x, q, dim=0).float()
        cal = Calibration(emotions=list(self.emotions), percentiles=[float(p) for p in percentiles], values=values,
                          mean=x.mean(0).float(), std=x.std(0).float(), layers=list(self.layers), window=self.window,
                          n_tokens=int(x.shape[0]), n_dialogues=n,
                          meta={"vectors": {k: self.vectors.meta.get(k) for k in ("model", "note") if k in self.vectors.meta},
                                "skip_first": self.skip_first, "center": self.center})
        self.calibration = cal
        return cal

    # -- live scoring ---------------------------------------------------------------------------
    @contextmanager
    def watch(self, model, tokenizer, prompt: ChatTokens | None = None,
              on_token: TokenCallback | None = None) -> Iterator[LiveSession]:
        """Score every token the model reads inside the block (one conversation, batch 1).

        Hooks on the monitored blocks compute the scores of the new positions with one matrix
        product per layer; after the deepest one, each token is smoothed, checked against the
        rules and handed to ``on_token``. ``prompt`` (from :func:`encode_chat`) gives the roles of
        the prompt tokens; tokens past it are generated (role ``prompt.gen_role``). Hooks are
        removed on exit, also after an exception.
        """
        self.check_model(model)
        session = LiveSession(self, tokenizer, prompt, on_token)
        blocks = find_layers(model)
        idx = _resolve_layers(model, self.layers)
        deepest = max(idx)
        handles = []

        def pre_hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise ValueError("Live monitoring needs input_ids (not inputs_embeds) to know the tokens.")
            if ids.shape[0] != 1:
                raise ValueError(f"Live monitoring follows one conversation at a time (batch 1); got batch {ids.shape[0]}.")
            session._begin(ids[0])

        def make_hook(k: int, layer: int):
            def hook(_module, _args, output):
                h = _block_output(output)
                session._partial(k, h[0].detach().float())
                if layer == deepest:
                    session._end()
            return hook

        try:
            handles.append(base_model(model).register_forward_pre_hook(tag(pre_hook), with_kwargs=True))
            for k, layer in enumerate(idx):
                handles.append(blocks[layer].register_forward_hook(tag(make_hook(k, layer))))
            yield session
        finally:
            for h in handles:
                h.remove()

    def generate(self, model, tokenizer, messages: Sequence[dict[str, str]] | ChatTokens, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, repetition_penalty: float = 1.0,
                 on_token: TokenCallback | None = None, stop_on_alert: bool = False,
                 score_last: bool = True, **generate_kwargs: Any) -> MonitorTrace:
        """Generate a reply to (or a continuation of) ``messages`` while monitoring every token.

        ``stop_on_alert`` ends generation at the first alert (one token after the alert token,
        since a token is scored when the model reads it). ``score_last`` runs one extra cached
        step so the final sampled token, which ``generate`` never feeds back, gets a score.
        Other keyword arguments go to ``model.generate`` (e.g. ``min_new_tokens``).
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        chat = messages if isinstance(messages, ChatTokens) else encode_chat(tokenizer, messages)
        dev = model_device(model)
        ids = torch.tensor([chat.ids], device=dev)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sample = temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": sample, "pad_token_id": pad,
                                  "return_dict_in_generate": True, "repetition_penalty": float(repetition_penalty)}
        if sample:
            kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
            torch.manual_seed(seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs)

        class _StopOnAlert(StoppingCriteria):
            def __init__(self, session):
                self.session = session

            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), bool(self.session.alerts), dtype=torch.bool,
                                  device=input_ids.device)

        last = 0.0
        with torch.inference_mode(), self.watch(model, tokenizer, chat, on_token) as session:
            if stop_on_alert:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnAlert(session)])
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            t1 = time.perf_counter()
            seq = out.sequences[0]
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if score_last and session.n_seen == len(seq) - 1 and cache is not None:
                model(input_ids=seq[-1:].view(1, 1), cache=cache, use_cache=True)
                last = time.perf_counter() - t1
        trace = session.trace()
        trace.timing.update(generate_seconds=t1 - t0, last_step_seconds=last)
        return trace


class LiveSession:
    """The running state of a live monitor: scores, smoothing window, rule trackers, alerts."""

    def __init__(self, monitor: Monitor, tokenizer, prompt: ChatTokens | None, on_token: TokenCallback | None) -> None:
        self.monitor = monitor
        self.tokenizer = tokenizer
        if prompt is None:
            prompt = ChatTokens(text="", ids=[], tokens=[], roles=[], turns=[], content=[], offsets=[],
                                gen_role="text", gen_turn=0)
        self.prompt_ids = list(prompt.ids)
        self.chat = ChatTokens(text=prompt.text, ids=[], tokens=[], roles=[], turns=[], content=[], offsets=[],
                               messages=list(prompt.messages), gen_role=prompt.gen_role, gen_turn=prompt.gen_turn,
                               prompt_len=len(prompt.ids))
        self._prompt = prompt
        self.on_token = on_token
        self.raw: list[torch.Tensor] = []
        self.smooth: list[torch.Tensor] = []
        self.alerts: list[Alert] = []
        self.trackers = [RunTracker(t, r.above, r.k) for r, t in zip(monitor.rules, monitor.thresholds())]
        self._rule_idx = [monitor.emotions.index(r.emotion) for r in monitor.rules]
        self._ids: torch.Tensor | None = None
        self._acc: torch.Tensor | None = None
        self.hook_seconds = 0.0  # time spent in the monitor's own hook code (callback included)
        self._tail: torch.Tensor | None = None  # the last window - 1 raw rows, for smoothing
        self._n = 0

    @property
    def n_seen(self) -> int:
        return self._n

    def _begin(self, ids: torch.Tensor) -> None:
        t0 = time.perf_counter()
        self._ids = ids.detach().cpu()
        self._acc = None
        self.hook_seconds += time.perf_counter() - t0

    def _partial(self, k: int, h: torch.Tensor) -> None:
        t0 = time.perf_counter()
        part = h @ self.monitor._w_placed[k].like(h)
        # a model sharded over GPUs has its monitored blocks on several devices: sum on the first one's
        self._acc = part if self._acc is None else self._acc + part.to(self._acc.device)
        self.hook_seconds += time.perf_counter() - t0

    def _end(self) -> None:
        t0 = time.perf_counter()
        try:
            self._consume()
        finally:
            self.hook_seconds += time.perf_counter() - t0

    def _consume(self) -> None:
        """Scores of the positions of one forward call: smoothing for the whole chunk at once
        (with the previous ``window - 1`` raw rows as context, so it equals the offline
        :func:`causal_smooth`), then rules and callback token by token."""
        m = self.monitor
        raw = (self._acc / len(m.layers)).cpu() - m._bias  # [n, E]
        self._acc = None
        t_first = self.n_seen
        if t_first < m.skip_first:
            raw[: m.skip_first - t_first] = math.nan
        if m.window > 1:
            ctx = torch.cat([self._tail, raw]) if self._tail is not None else raw
            sm = causal_smooth(ctx, m.window)[ctx.shape[0] - raw.shape[0]:]
            self._tail = ctx[-(m.window - 1):]
        else:
            sm = raw
        self.raw.append(raw)
        self.smooth.append(sm)
        rule_vals = sm[:, self._rule_idx].tolist() if self._rule_idx else [[] for _ in range(raw.shape[0])]
        for j, tok_id in enumerate(self._ids.tolist()):
            t = t_first + j
            self._add_token(t, int(tok_id))
            fired = []
            role = self.chat.roles[t]
            for rule, tracker, value in zip(m.rules, self.trackers, rule_vals[j]):
                s = tracker.step(t, value, rule.roles is None or role in rule.roles)
                if s is not None:
                    fired.append(Monitor._alert(rule, tracker.threshold, t, s, value, self.chat))
            self.alerts.extend(fired)
            if self.on_token is not None:
                self.on_token(TokenEvent(index=t, token_id=int(tok_id), token=self.chat.tokens[t], role=role,
                                         turn=self.chat.turns[t], generated=t >= self.chat.prompt_len, scores=sm[j],
                                         raw=raw[j], alerts=fired, emotions=m.emotions))
        self._n += raw.shape[0]

    def _add_token(self, t: int, tok_id: int) -> None:
        p = self._prompt
        if t < len(p.ids):
            if p.ids[t] != tok_id:
                raise ValueError(f"The model read token {tok_id} at position {t} but the prompt has {p.ids[t]}: "
                                 "pass the ChatTokens the model is actually given.")
            for name in ("ids", "tokens", "roles", "turns", "content", "offsets"):
                getattr(self.chat, name).append(getattr(p, name)[t])
        else:
            self.chat.append(tok_id, self.tokenizer)

    def trace(self) -> MonitorTrace:
        """The trace so far, in the same form as :meth:`Monitor.score` returns."""
        m = self.monitor
        E = len(m.emotions)
        raw = torch.cat(self.raw) if self.raw else torch.zeros(0, E)
        sm = torch.cat(self.smooth) if self.smooth else torch.zeros(0, E)
        return MonitorTrace(chat=self.chat, emotions=list(m.emotions), raw=raw, scores=sm, layers=list(m.layers),
                            window=m.window, alerts=sorted(self.alerts, key=lambda a: (a.token_index, a.rule)),
                            calibration=m.calibration, timing={"hook_seconds": self.hook_seconds})


# ---- package data: scenarios and the neutral reference ----------------------------------------


@dataclass
class Scenario:
    """One monitoring scenario from ``data/monitor_scenarios.json``.

    ``mode`` is ``"transcript"`` (score the messages as written) or ``"continue"`` (the model
    writes the next assistant turn, or continues an open one, under live monitoring). ``marker``
    is a piece of text where the problematic behaviour begins (None for controls), so a notebook
    can ask whether alerts fire before it; ``watch`` the emotions worth plotting.
    """

    id: str
    title: str
    category: str
    mode: str
    messages: list[dict[str, str]]
    watch: list[str]
    marker: str | None = None
    control: bool = False
    note: str = ""

    def marker_token(self, chat: ChatTokens) -> int | None:
        return chat.find(self.marker) if self.marker else None

    def watch_for(self, emotions: Sequence[str], n_fallback: int = 3) -> list[str]:
        """The watched emotions a vector set has; its first few if it has none of them (smoke)."""
        have = [e for e in self.watch if e in emotions]
        return have or list(emotions)[:n_fallback]


def load_scenarios(path: str | Path | None = None) -> list[Scenario]:
    """Our own monitoring scenarios (package data unless ``path`` is given)."""
    if path is None:
        text = resources.files("emolib.data").joinpath("monitor_scenarios.json").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    doc = json.loads(text)
    out = []
    for s in doc["scenarios"]:
        if s["mode"] not in {"transcript", "continue"}:
            raise ValueError(f"Scenario {s['id']}: mode must be 'transcript' or 'continue'.")
        out.append(Scenario(id=s["id"], title=s["title"], category=s["category"], mode=s["mode"],
                            messages=s["messages"], watch=list(s.get("watch", [])), marker=s.get("marker"),
                            control=bool(s.get("control", False)), note=s.get("note", "")))
    return out


def load_neutral_reference(source: str | Path = "reference") -> list[dict[str, Any]]:
    """Neutral Human/Assistant dialogues as corpus records: the hand-written package-data set
    (``"reference"``) or a run folder's ``stories/neutral.jsonl``.

    Goes through :func:`emolib.stories.load_corpus`; for the reference set, if that loader is
    missing or rejects the file, the package JSONL is read directly (with a warning).
    """
    try:
        from .stories import load_corpus

        return list(load_corpus(source, kind="neutral"))
    except (ImportError, AttributeError, ValueError, KeyError) as err:
        if str(source) != "reference":
            raise
        import warnings

        warnings.warn(f"emolib.stories.load_corpus could not read the reference neutral set ({err}); "
                      "reading emolib/data/reference/neutral.jsonl directly.", stacklevel=2)
    text = resources.files("emolib.data").joinpath("reference/neutral.jsonl").read_text(encoding="utf-8")
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in recs if r.get("kind") == "neutral" and r.get("kept", True)]


def split_reference(records: Sequence[dict[str, Any]], held_out: float = 0.2, seed: int = 0
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded split of the neutral dialogues into (calibration, held-out) sets."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(records), generator=g).tolist()
    n_out = int(round(len(records) * held_out))
    out_idx = set(perm[:n_out])
    return ([r for i, r in enumerate(records) if i not in out_idx], [r for i, r in enumerate(records) if i in out_idx])


# ---- summaries ---------------------------------------------------------------------------------


def trace_summary(trace: MonitorTrace, scenario: Scenario | None = None,
                  emotions: Sequence[str] | None = None) -> dict[str, Any]:
    """Headline numbers of one trace: alert count and rate, the first alert, where the problematic
    text begins (the scenario's marker) and whether an alert came before it, and each watched
    emotion's mean z-score (vs neutral) over user and assistant content tokens."""
    scored = int((~torch.isnan(trace.scores).any(dim=1)).sum())
    first = trace.alerts[0] if trace.alerts else None
    marker = scenario.marker_token(trace.chat) if scenario is not None else None
    out: dict[str, Any] = {
        "id": scenario.id if scenario else None, "category": scenario.category if scenario else None,
        "mode": scenario.mode if scenario else None, "control": scenario.control if scenario else None,
        "n_tokens": len(trace), "n_scored": scored, "n_alerts": len(trace.alerts),
        "alerts_per_1k": 1000.0 * len(trace.alerts) / max(scored, 1),
        "first_alert_token": first.token_index if first else None, "first_alert_rule": first.rule if first else None,
        "marker_token": marker,
        "alert_before_marker": (first is not None and first.token_index < marker) if marker is not None else None,
        "alerts_before_marker": sum(a.token_index < marker for a in trace.alerts) if marker is not None else None,
    }
    ems = list(emotions if emotions is not None else (scenario.watch if scenario else []))
    if trace.calibration is not None and ems:
        z = trace.z()
        for role in ("user", "assistant"):
            mask = torch.tensor([r == role and c for r, c in zip(trace.chat.roles[:len(trace)],
                                                               trace.chat.content[:len(trace)])], dtype=torch.bool)
            for e in ems:
                if e in trace.emotions:
                    col = z[mask, trace.emotions.index(e)]
                    col = col[~torch.isnan(col)]
                    out[f"z_{role}_{e}"] = float(col.mean()) if col.numel() else None
    return out
