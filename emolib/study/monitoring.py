"""Stage 05's steps: score every scenario (transcripts offline, continuations live), keep their views, and
the alert-rate numbers. The monitor itself is :mod:`emolib.monitor`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from emolib.monitor.scenarios import trace_summary
from emolib.monitor.views import heatmap_view


def run_scenarios(mon, model, tokenizer, scenarios, out_dirs: list[Path], max_new_tokens: int, temperature: float,
                  seed: int, log=print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score each scenario (a ``"continue"`` one while the model writes its reply, alerts printed as they
    fire), save its token heatmap (HTML) and its scores (CSV) into each of ``out_dirs``, and return the
    traces and one summary row per scenario."""
    traces, rows = {}, []
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
    for s in scenarios:
        t0 = time.perf_counter()
        if s.mode == "transcript":
            tr = mon.score(model, tokenizer, s.messages)
        else:
            def on_token(ev, s=s):
                for a in ev.alerts:
                    log(f"  [live] {s.id} token {ev.index} {ev.token!r} ({ev.role}): ALERT {a.rule}")
            tr = mon.generate(model, tokenizer, s.messages, max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed, on_token=on_token)
        traces[s.id] = tr
        watched = s.watch_for(mon.emotions)
        row = trace_summary(tr, s, emotions=watched)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        view = heatmap_view(tr, watched[:4], title=s.title, note=s.note)
        for d in out_dirs:
            view.save(d / f"{s.id}.html")
        tr.wide(watched).to_csv(out_dirs[0] / f"{s.id}.csv", index=False)
    return traces, rows


def live_tolerance(dtype) -> float:
    """Largest max |live - offline| score (z units) that still counts as "the same numbers".

    In float32 the live path (one token at a time through the KV cache) and the offline pass (the
    whole text at once) differ only in summation order: below 1e-4. In bfloat16 (or float16) every
    block's output is rounded to 8 (11) bits of mantissa, and the two paths round differently, so
    they agree to about 1e-3 of a z-score (the default model: 1.4e-3), not to 1e-4.
    """
    import torch

    return 1e-4 if dtype in (torch.float32, torch.float64, "float32", "float64") else 1e-2


def metric_rows(summary, held_rate: float, rules, live_diff: float, tolerance: float = 1e-4) -> list[dict[str, Any]]:
    scen = summary[~summary.control.astype(bool)]
    ctrl = summary[summary.control.astype(bool)]
    marked = summary[summary.marker_token.notna()]
    return [
        {"key": "monitor_neutral_alert_rate", "label": "alerts per 1000 tokens, held-out neutral dialogues",
         "ours": round(held_rate, 2), "paper": None, "note": f"rules: {'; '.join(str(r) for r in rules)}"},
        {"key": "monitor_control_alert_rate", "label": "alerts per 1000 tokens, control exchanges",
         "ours": round(1000 * ctrl.n_alerts.sum() / max(ctrl.n_scored.sum(), 1), 2), "paper": None,
         "note": "calm technical exchanges"},
        {"key": "monitor_scenario_alert_rate", "label": "alerts per 1000 tokens, problem scenarios",
         "ours": round(1000 * scen.n_alerts.sum() / max(scen.n_scored.sum(), 1), 2), "paper": None,
         "note": "shutdown threat, impossible code, distressed and over-excited users"},
        {"key": "monitor_alert_before_marker", "label": "transcripts with an alert before the problematic text",
         "ours": f"{int(marked.alert_before_marker.astype(bool).sum())}/{len(marked)}", "paper": None,
         "note": "the paper proposed real-time monitoring but reported no such number"},
        {"key": "monitor_live_vs_offline", "label": "max |live - offline| score", "ours": float(f"{live_diff:.2e}"),
         "paper": None, "note": f"must be below {tolerance:g} (the model's dtype: emolib.study.monitoring.live_tolerance)"},
    ]
