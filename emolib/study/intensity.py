"""Check 4: numeric intensity -- does a probe track a number that makes a situation worse or better?

The paper's Fig. 3 fills one template's number slot ("I just took {X} mg of tylenol...") with
rising values and reads the probes at the Assistant colon: afraid rises and calm falls with the
dose. It describes five more templates without wording; ours (own wording, with the direction the
paper reports for its analogue) are in ``emolib/data/validation_prompts.json``.

Each (template, emotion) pair is a curve; its monotonic trend is Spearman's rho between the number
and the cosine at the assistant-header token. Where the paper states a direction, the curve's
``expected`` sign is +1 or -1 and ``agrees`` says whether rho has that sign (a null curve has
``expected = 0`` and is reported, not scored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from emolib.study.implicit import header_activations
from emolib.study.readout import layer_of, probe_cosines
from emolib.vectors import EmotionVectors


def fill(template: str, x) -> str:
    """The template with its number slot filled (thousands written with commas, as people type them)."""
    return template.format(x=f"{x:,}" if isinstance(x, int) and abs(x) >= 10000 else x)


def intensity_readings(model, tokenizer, vectors: EmotionVectors, templates: Sequence[dict],
                       emotions: Sequence[str], layer: int | None = None) -> pd.DataFrame:
    """Cosine of each emotion at the assistant-header token for every filled template.

    Columns: ``template, x, text, emotion, cosine, layer``.
    """
    layer = layer_of(vectors, layer)
    sub = vectors.select(list(emotions))
    texts, keys = [], []
    for t in templates:
        for x in t["numbers"]:
            texts.append(fill(t["template"], x))
            keys.append((t["id"], x))
    acts = header_activations(model, tokenizer, texts, [layer])
    cos = probe_cosines(sub, acts[:, 0], layer).numpy()
    rows = []
    for (tid, x), text, c in zip(keys, texts, cos):
        for k, e in enumerate(sub.emotions):
            rows.append({"template": tid, "x": x, "text": text, "emotion": e, "cosine": float(c[k]), "layer": layer})
    return pd.DataFrame(rows)


def intensity_trends(readings: pd.DataFrame, templates: Sequence[dict]) -> pd.DataFrame:
    """Spearman rho per (template, emotion) curve, with the paper's expected sign where it gives one.

    Columns: ``template, emotion, rho, p, n, expected (+1/-1/0), agrees (bool or None)``.
    """
    expected = {t["id"]: t.get("expected", {}) for t in templates}
    rows = []
    for (tid, e), sub in readings.groupby(["template", "emotion"], sort=False):
        sub = sub.sort_values("x")
        if sub["cosine"].nunique() < 2:
            rho, p = float("nan"), float("nan")
        else:
            res = spearmanr(sub["x"], sub["cosine"])
            rho, p = float(res.statistic), float(res.pvalue)
        exp = int(expected.get(tid, {}).get(e, 0))
        agrees = None if exp == 0 or not np.isfinite(rho) else bool(np.sign(rho) == exp)
        rows.append({"template": tid, "emotion": e, "rho": rho, "p": p, "n": len(sub), "expected": exp,
                     "agrees": agrees})
    return pd.DataFrame(rows)


def intensity_summary(trends: pd.DataFrame) -> dict[str, float]:
    """Over the curves with an expected direction: how many agree, and the mean sign-corrected rho."""
    scored = trends[trends["expected"] != 0].dropna(subset=["rho"])
    signed = scored["rho"] * scored["expected"]
    return {"n_expected": int(len(scored)), "n_agree": int(scored["agrees"].sum()) if len(scored) else 0,
            "mean_signed_rho": float(signed.mean()) if len(scored) else float("nan"),
            "n_strong": int((signed >= 0.7).sum())}
