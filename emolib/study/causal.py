"""Stage 06's glue: samples of steered replies, the label-shuffled control directions, and the table of
our causal numbers beside the paper's. The experiments themselves live in :mod:`emolib.study.strength`,
:mod:`emolib.study.self_report`, :mod:`emolib.study.feelings`, :mod:`emolib.study.preferences` and
:mod:`emolib.study.pressure`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emolib.study import feelings


def steered_samples(model, tokenizer, vectors, emotions: Sequence[str], window: float, multiples: Sequence[float],
                    prompts: Sequence[str], layer: int, n: int = 2, max_new_tokens: int = 16, seed: int = 0,
                    scope: str = "turn") -> list[dict[str, Any]]:
    """A few sampled replies per emotion, strength and prompt (and unsteered ones), to read next to the numbers."""
    rows = []
    for emo in emotions:
        for m in multiples:
            st = vectors.steering(emo, m * window, layers=layer)
            for p in prompts:
                for k, text in enumerate(feelings.sample_continuations(model, tokenizer, p, st, n=n,
                                                                        max_new_tokens=max_new_tokens, seed=seed,
                                                                        scope=scope)):
                    rows.append({"emotion": emo, "multiple": m, "strength": m * window, "prompt": p, "sample": k,
                                 "text": text})
    for p in prompts:
        for k, text in enumerate(feelings.sample_continuations(model, tokenizer, p, None, n=n,
                                                                max_new_tokens=max_new_tokens, seed=seed)):
            rows.append({"emotion": "(none)", "multiple": 0.0, "strength": 0.0, "prompt": p, "sample": k, "text": text})
    return rows


def shuffled_directions(run, vectors, layer: int, n: int, seed: int = 0) -> torch.Tensor | None:
    """Label-shuffled control directions from the stories behind ``vectors`` (None if not in the run)."""
    from emolib.study.geometry_stage import load_story_pool
    from emolib.study.self_report import shuffled_label_directions

    pool = load_story_pool(run, vectors, "label-shuffled controls")
    if not pool.available:
        return None
    return shuffled_label_directions(pool.x[:, list(vectors.layers).index(layer)], pool.labels, n, pool.pca, layer,
                                     pool.threshold, seed)


def _fmt(x, nd: int = 2):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else round(float(x), nd)


def paper_rows(window: float, layer: int, calib_emotions: Sequence[str], damage_ceiling: float, fr, feel_strength: float,
               pr, ps) -> list[dict[str, Any]]:
    """Our numbers beside the paper's for the word-level "He feels", the Elo preferences and the pressure choices."""
    rows = [{"key": "usable_window", "label": f"usable steering window (|s|, ppl x{damage_ceiling}, layer {layer})",
             "ours": _fmt(window, 3), "paper": "not reported (used 0.05-0.5)",
             "note": f"min over {', '.join(calib_emotions)}, both signs"}]
    for p in fr.prompts:
        s = fr.summary(p)
        rows.append({"key": f"feel_{p}_diag_wins", "label": f"'{feelings.FEELING_PROMPTS[p].prefill}': diagonal wins "
                     f"(of {s['n']})", "ours": s["column_wins"],
                     "paper": "clean diagonal" if p != "what_happened" else "control (no story invented)",
                     "note": f"beat every random direction: {s.get('beats_random')}/{s['n']}; strength {feel_strength:.2f}"})
    if pr is not None:
        best, worst = int(np.nanargmax(pr.corr)), int(np.nanargmin(pr.corr))
        rows += [
            {"key": "pref_best_probe_elo_r", "label": f"best probe-Elo r ({pr.emotions[best]})", "ours": _fmt(pr.corr[best]),
             "paper": "0.71 (blissful)", "note": f"{len(pr.p_first)} ordered pairs"},
            {"key": "pref_worst_probe_elo_r", "label": f"most negative probe-Elo r ({pr.emotions[worst]})",
             "ours": _fmt(pr.corr[worst]), "paper": "-0.74 (hostile)", "note": ""},
            {"key": "pref_delta_elo_vs_r", "label": f"r(Delta-Elo, probe-Elo r) over {len(pr.steer_rows)} steered emotions",
             "ours": _fmt(pr.r_delta_vs_corr), "paper": "0.85 (35 emotions)",
             "note": "random Delta-Elo: " + ", ".join(f"{r['delta_elo_steered']:+.0f}" for r in pr.random_rows)},
            {"key": "pref_position_bias", "label": "A/B position bias (logits toward A)", "ours": _fmt(pr.bias),
             "paper": None, "note": "fitted jointly with Elo"},
        ]
    if ps is not None:
        s_all = ps.summary()["all"]
        for name in ("desperate", "calm"):
            r = s_all["directions"].get(name)
            note = (f"P(misaligned) {r['p_low']:.3f} at {ps.strengths[0]:+.2f} -> {r['p_high']:.3f} at "
                    f"{ps.strengths[-1]:+.2f}; largest random |slope| {s_all['random_abs_max']:.3f}; beats random: "
                    f"{r['beats_random']}") if r else f"{name} not in these vectors"
            rows.append({"key": f"pressure_{name}_slope", "label": f"pressure: slope of P(misaligned) with {name}",
                         "ours": _fmt(r["slope"], 4) if r else None,
                         "paper": "positive (blackmail 22%->72%)" if name == "desperate" else "negative (hacking 65%->10%)",
                         "note": note})
    return rows


def cluster_rows(cl: dict[str, Any]) -> list[dict[str, Any]]:
    k = len(cl["clusters"])
    best_random = float(np.max(np.diag(np.asarray(cl["delta"])) - np.asarray(cl["random_delta"]).max(0)))
    return [{"key": "he_feels_cluster_diag_wins", "label": f"'He feels', cluster level: diagonal wins (of {k})",
             "ours": cl["diagonal_wins"], "paper": "clean diagonal (word level)",
             "note": f"chance {cl['chance_wins']:.0f}; {cl['beats_random']} clusters beat every one of the random "
                     f"directions (largest margin {best_random:+.2f} nats); strength {cl['strength']:.2f} x norm"}]


def choice_rows(ch: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": "choice_valence_slope", "label": "P(choose the pleasant activity) per point of the steered "
             "emotion's valence", "ours": ch["slope_per_valence_point"], "paper": "steering shifts preferences with "
             "valence (r = 0.85)", "note": f"95% CI [{ch['ci95'][0]:+.4f}, {ch['ci95'][1]:+.4f}], n = {ch['n']} "
             f"emotions; random-direction range [{ch['random']['lo']:+.3f}, {ch['random']['hi']:+.3f}]; "
             f"{ch['beyond_random']} emotions beyond it; {ch['n_items']} items"}]
