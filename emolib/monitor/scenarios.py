"""Our monitoring scenarios (package data) and the headline numbers of a scored scenario."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from emolib.chat import ChatTokens
from emolib.monitor.trace import MonitorTrace


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


def split_reference(records: Sequence[dict[str, Any]], held_out: float = 0.2, seed: int = 0
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded split of the neutral dialogues into (calibration, held-out) sets."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(records), generator=g).tolist()
    n_out = int(round(len(records) * held_out))
    out_idx = set(perm[:n_out])
    return ([r for i, r in enumerate(records) if i not in out_idx], [r for i, r in enumerate(records) if i in out_idx])


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
