"""The whole 01 -> 06 chain on the smoke profile, through the same runner `make reproduce` uses."""

from __future__ import annotations

import json

import pytest

from emolib.pipeline import STAGES, run_pipeline
from emolib.vectors import EmotionVectors


@pytest.mark.slow
def test_smoke_chain_runs_end_to_end(tmp_path):
    run = tmp_path / "smoke"
    results = run_pipeline("smoke", run=run)
    assert [r.stage for r in results] == list(STAGES)
    assert all(r.status == "ok" for r in results)
    for st in STAGES:
        nb = json.loads((run / "notebooks" / f"{st}.ipynb").read_text())
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), st
        assert (run / "metrics" / f"{st}.json").exists(), f"{st} wrote no metrics"
    # the token-level neutral PCA reads the dialogues once, for their covariance; it pools no per-dialogue means
    assert (run / "activations" / "reference_neutral_moments.safetensors").exists()
    assert not (run / "activations" / "reference_neutral").exists()
    vec = EmotionVectors.load(run / "vectors.safetensors")
    assert vec.default_layer is not None and vec.vectors.shape[0] == 4
    figs = sorted((run / "figures").glob("*.png"))
    assert len(figs) >= 6
    for png in figs:
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["caption"] and "data" in meta
    report = (run / "REPORT.md").read_text()
    assert "| 06_causal_steering | ok |" in report
    # a second run skips every stage
    again = run_pipeline("smoke", run=run)
    assert [r.status for r in again] == ["skipped"] * len(STAGES)
