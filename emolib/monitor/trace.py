"""A scored conversation: per-token scores, alerts, and tables of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emolib.chat import ChatTokens
from emolib.monitor.alerts import Alert
from emolib.monitor.calibration import Calibration


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


def _index(names: Sequence[str], name: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        import difflib

        close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
        raise KeyError(f"Unknown emotion {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else "")) from None


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
