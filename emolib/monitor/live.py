"""Live monitoring: the running state that scores each token as the model reads it."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from emolib.chat import ChatTokens
from emolib.monitor.alerts import Alert, RunTracker, causal_smooth, make_alert
from emolib.monitor.trace import MonitorTrace, TokenCallback, TokenEvent

if TYPE_CHECKING:  # the monitor creates its sessions; only its type is named here
    from emolib.monitor.scoring import Monitor


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
                    fired.append(make_alert(rule, tracker.threshold, t, s, value, self.chat))
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
