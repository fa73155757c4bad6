"""Token heatmaps: the paper's scaling (99th-percentile |value| over all probes -> [-1, 1]) on planted input."""

from __future__ import annotations

import numpy as np
import pytest

from emolib.monitor.heatmap import heatmap_figure, heatmap_html, percentile_scale, scale_values, token_heat


def test_scale_is_99th_percentile_of_absolute_values():
    v = -np.arange(1, 101, dtype=float)  # |v| = 1..100; numpy's 99th percentile of 1..100 is 99.01
    assert percentile_scale(v) == pytest.approx(99.01)
    scaled, s = scale_values(v)
    assert s == pytest.approx(99.01)
    assert scaled[-1] == -1.0  # beyond the scale: clipped, sign kept
    assert scaled[98] == pytest.approx(-99 / 99.01)
    assert scaled[0] == pytest.approx(-1 / 99.01)
    assert np.all(np.abs(scaled) <= 1)


def test_one_outlier_is_clipped_not_the_scale():
    v = np.full(1000, 0.5)
    v[::2] = -0.5
    v[7] = 50.0
    scaled, s = scale_values(v)
    assert s == pytest.approx(0.5)
    assert scaled[7] == 1.0 and scaled[0] == pytest.approx(-1.0) and scaled[1] == pytest.approx(1.0)


def test_scale_is_shared_by_all_probes_and_skips_positions():
    tokens = [f"t{i}" for i in range(200)]
    quiet = np.full(200, 0.1)
    loud = np.linspace(-10, 10, 200)
    vals = np.stack([quiet, loud], axis=1)
    vals[0] = 1e6  # an attention-sink position, skipped
    h = token_heat(tokens, vals, probe="quiet", probes=["quiet", "loud"], skip=[0])
    expected = np.percentile(np.abs(vals[1:]).ravel(), 99)
    assert h.scale == pytest.approx(expected)
    assert np.isnan(h.scaled[0])
    assert np.nanmax(np.abs(h.scaled)) == pytest.approx(0.1 / expected)  # the quiet probe looks pale
    h2 = token_heat(tokens, vals, probe=1, skip=[0])
    assert h2.scale == pytest.approx(expected) and h2.probe == "1"
    with pytest.raises(ValueError, match="which probe"):
        token_heat(tokens, vals)
    with pytest.raises(ValueError, match="5 tokens but values for 200"):
        token_heat(tokens[:5], vals, probe=0)


def test_zero_values_do_not_divide_by_zero():
    scaled, s = scale_values(np.zeros(10))
    assert s == 1.0 and np.all(scaled == 0)


def test_html_and_figure_render_every_token(tmp_path):
    tokens = ["Hello", " world", "\n", "<b>&", " $x$ ", "!"]
    h = token_heat(tokens, np.array([0.0, 1.0, -1.0, 0.5, 2.0, -0.2]), title="demo", probe="p")
    page = heatmap_html([h, h])
    assert page.count("<span title=") == 2 * len(tokens)
    assert "&lt;b&gt;&amp;" in page and "<br>" in page and "demo" in page
    fig = heatmap_figure(h, width_chars=12)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == len(tokens) + 1  # one per token plus the title
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    d = h.to_dict()
    assert d["tokens"] == tokens and len(d["scaled"]) == len(tokens)
