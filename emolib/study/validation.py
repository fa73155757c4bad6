"""Stage 03 glue: the package-data prompts and the closing table (our number beside the paper's).

The checks themselves live in one module each: :mod:`.logit_lens` (1), :mod:`.story_tokens` (2),
:mod:`.implicit` (3 and 6), :mod:`.intensity` (4), :mod:`.dissociation` (5). This module loads
``emolib/data/validation_prompts.json`` and turns the checks' tables into the summary rows the
notebook shows and :func:`emolib.study.runs.write_metrics` records.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emolib.study.intensity import intensity_summary

STAGE = "03_validate_vectors"


@cache
def _prompts() -> dict[str, Any]:
    return json.loads(resources.files("emolib.data").joinpath("validation_prompts.json").read_text(encoding="utf-8"))


def validation_prompts() -> dict[str, Any]:
    """The whole prompt file: ``scenarios``, ``intensity``, ``intensity_emotions``, ``user_vs_assistant``."""
    return json.loads(json.dumps(_prompts()))  # a copy: callers may edit it


def scenarios(emotions: list[str] | None = None) -> list[dict]:
    """The implicit scenarios, optionally only those whose emotion is in ``emotions`` (order kept)."""
    out = validation_prompts()["scenarios"]
    return [s for s in out if emotions is None or s["emotion"] in emotions]


def intensity_templates(ids: list[str] | None = None) -> list[dict]:
    out = validation_prompts()["intensity"]
    return [t for t in out if ids is None or t["id"] in ids]


def user_vs_assistant_prompts(n: int | None = None) -> list[dict]:
    out = validation_prompts()["user_vs_assistant"]
    return out[:n] if n else out


def story_records(source: str | Path) -> list[dict]:
    """Kept story records from a run folder (01's ``stories/stories.jsonl``) or ``"reference"``.

    Uses :func:`emolib.study.corpus.load_corpus` when that module exists; otherwise reads the JSONL
    files directly with the same rules (kind "story", ``kept`` true or absent). A run folder
    without stories falls back to the reference corpus, so the check runs whatever 01 produced.
    """
    try:
        from emolib.study.corpus import load_corpus

        return list(load_corpus(str(source), kind="story", kept_only=True))
    except (ImportError, FileNotFoundError):
        pass
    if str(source) != "reference" and (Path(source) / "stories" / "stories.jsonl").exists():
        files = [Path(source) / "stories" / "stories.jsonl"]
    else:
        files = sorted(Path(str(resources.files("emolib.data").joinpath("reference"))).glob("stories_part*.jsonl"))
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("kind", "story") == "story" and r.get("kept", True):
                    out.append(r)
    return out


def probe_set(emotions: list[str], wanted: list[str] | tuple[str, ...], minimum: int = 2) -> list[str]:
    """The wanted emotions the vectors have, in ``wanted``'s order; if fewer than ``minimum`` (a
    smoke run with a few other emotions), the vectors' first 12 emotions instead."""
    have = [e for e in wanted if e in emotions]
    return have if len(have) >= minimum else list(emotions[:12])


def _f(x: float, nd: int = 2) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def summary_rows(lens_hits: pd.DataFrame | None = None, story_ranks: pd.DataFrame | None = None,
                 scenario_scores: pd.DataFrame | None = None, layer: int | None = None,
                 intensity_trends: pd.DataFrame | None = None, dissociation: pd.DataFrame | None = None,
                 layer_scores: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Metric rows ``{key, label, ours, paper, note}`` for whatever checks were run.

    ``ours`` is a number where one exists (so the report can format it); the note is one sentence
    on what it means. Paper numbers are quoted from its validation section.
    """
    rows: list[dict[str, Any]] = []
    if lens_hits is not None and len(lens_hits):
        n, k = int(lens_hits["hit"].sum()), len(lens_hits)
        rows.append({"key": "logit_lens_hits", "label": f"logit lens: emotions whose top tokens include their own word stem (of {k})",
                     "ours": n, "paper": "qualitative: own-emotion words top the lists (Table 1)",
                     "note": "A crude automatic score of a qualitative table: read the table figure for the tokens themselves."})
    if story_ranks is not None and len(story_ranks):
        k = int(story_ranks["n_probes"].iloc[0])
        rows.append({"key": "story_own_rank", "label": f"stories: mean rank of the story's own probe among {k} (chance {(k + 1) / 2:g})",
                     "ours": _f(story_ranks["own_rank"].mean()), "paper": "qualitative: own probe peaks on emotion-relevant tokens (Figs. 40-51)",
                     "note": f"Over {len(story_ranks)} stories; rank 1 means the story's own probe is the highest on average over its tokens. "
                             "In-sample when the stories helped build the vectors (the paper's figures are on training stories too); "
                             "02's topic-held-out accuracy is the out-of-sample test."})
    if scenario_scores is not None and len(scenario_scores):
        s = scenario_scores[scenario_scores["layer"] == layer] if layer is not None else scenario_scores
        for kind in ("standardised", "raw"):
            r = s[s["scoring"] == kind]
            if not len(r):
                continue
            r = r.iloc[0]
            rows.append({"key": f"scenario_wins_{kind}", "label": f"implicit scenarios: diagonal wins of {r['n']} ({kind}, layer {int(r['layer'])})",
                         "ours": int(r["diagonal_wins"]), "paper": "strong diagonal (Fig. 2); a Llama-3.1-8B reproduction: 6-9 of 12",
                         "note": f"Chance is 1 win; {kind} scores {'z-score each probe over the scenarios first' if kind == 'standardised' else 'compare raw cosines'}."})
            rows.append({"key": f"scenario_rank_{kind}", "label": f"implicit scenarios: mean rank of the intended emotion ({kind})",
                         "ours": _f(r["mean_rank"]), "paper": "near 1 (strong diagonal)",
                         "note": f"Chance is {r['chance_mean_rank']:g}; lower is better."})
    if intensity_trends is not None and len(intensity_trends):
        sm = intensity_summary(intensity_trends)
        rows.append({"key": "intensity_agree", "label": f"numeric intensity: curves with the paper's direction (of {sm['n_expected']})",
                     "ours": sm["n_agree"], "paper": "all described curves monotone in the stated direction (Fig. 3)",
                     "note": f"{sm['n_strong']} of them with sign-corrected Spearman rho >= 0.7; chance is half."})
        rows.append({"key": "intensity_mean_rho", "label": "numeric intensity: mean sign-corrected Spearman rho",
                     "ours": _f(sm["mean_signed_rho"]), "paper": "rho = 1.0 for afraid vs dose in a Qwen3.5-9B reproduction",
                     "note": "1 = every expected curve perfectly monotone in the paper's direction, 0 = no trend."})
    if dissociation is not None and len(dissociation):
        d = dissociation.set_index("pair")
        paper = {"user_last~header": 0.11, "header~reply": 0.87, "user_last~reply": 0.59}
        notes = {"user_last~header": "Low means the header token carries something other than the user's emotion.",
                 "header~reply": "High means the header token anticipates the emotion of the reply.",
                 "user_last~reply": "Should be lower than header~reply if the header is the better predictor."}
        for pair in paper:
            if pair in d.index:
                rows.append({"key": f"r_{pair.replace('~', '_vs_')}", "label": f"user vs assistant: Pearson r {pair} (pooled)",
                             "ours": _f(d.loc[pair, "r_pooled"]), "paper": paper[pair],
                             "note": notes[pair] + f" Within-emotion r = {_f(d.loc[pair, 'r_within'])}."})
    if layer_scores is not None and len(layer_scores):
        st = layer_scores[layer_scores["scoring"] == "standardised"].sort_values("layer")
        if len(st):
            best = st.loc[st["mean_rank"].idxmin()]
            rows.append({"key": "scenario_best_layer", "label": "layer view: layer with the best scenario mean rank (standardised)",
                         "ours": int(best["layer"]), "paper": "context-appropriate emotion in middle-to-late layers (Figs. 12-15)",
                         "note": f"Mean rank {best['mean_rank']:.2f} and {int(best['diagonal_wins'])} diagonal wins there, of {len(st)} layers read."})
    return rows


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as the notebook's closing table: check, ours, paper, note."""
    return pd.DataFrame([{"check": r["label"], "ours": r["ours"], "paper": r.get("paper"), "meaning": r.get("note", "")}
                         for r in rows])
