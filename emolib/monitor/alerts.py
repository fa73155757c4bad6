"""Alert rules over smoothed per-token scores: causal smoothing, the rule grammar, and the one run detector that live and offline scoring share."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


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


def make_alert(rule: AlertRule, thr: float, t: int, start: int, value: float, chat) -> Alert:
    """The :class:`Alert` of ``rule`` firing at token ``t`` of ``chat`` (a :class:`~emolib.chat.ChatTokens`)."""
    return Alert(rule=str(rule), emotion=rule.emotion, token_index=t, run_start=start, value=value, threshold=thr,
                 token=chat.tokens[t] if t < len(chat.tokens) else "", role=chat.roles[t] if t < len(chat.roles) else "",
                 turn=chat.turns[t] if t < len(chat.turns) else -1, above=rule.above)
