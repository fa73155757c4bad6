"""What neutral text looks like to the monitor: per-emotion percentiles of smoothed scores, the thresholds of the alert rules."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PERCENTILES = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9)


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
