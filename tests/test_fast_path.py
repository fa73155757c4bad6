"""What makes the cold default run fit its budget without changing its numbers: bfloat16 where the
CPU has it, palette PNGs, the neutral dialogues read once, a spread-out subset for side checks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from emolib import models  # noqa: E402
from emolib.emotions import all_emotions, emotion_subset  # noqa: E402
from emolib.study.monitoring import live_tolerance  # noqa: E402
from emolib.study.runs import save_figure  # noqa: E402


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    assert models._pick_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    # None keeps the exact float32 reference on every CPU; an explicit dtype is always obeyed
    assert models._pick_dtype(None, "cpu") == torch.float32
    assert models._pick_dtype("float32", "cpu") == torch.float32
    assert models._pick_dtype("bfloat16", "cpu") == torch.bfloat16


def test_native_bf16_probe_answers_without_failing(monkeypatch):
    assert isinstance(models.cpu_has_native_bf16(), bool)
    # a torch build without the probes: float32, not an AttributeError
    monkeypatch.setattr(torch, "cpu", object())
    assert models.cpu_has_native_bf16() is False


def test_auto_dtype_reaches_the_loaded_model(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    model, _, info = models.load_model("tiny-random", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16 and info.dtype == "bfloat16"


def test_live_tolerance_depends_on_dtype():
    assert live_tolerance(torch.float32) == 1e-4
    assert live_tolerance(torch.bfloat16) == 1e-2 and live_tolerance(torch.float16) == 1e-2


def test_every_k_subset_spreads_over_the_171():
    every3 = emotion_subset("every:3")
    assert len(every3) == 57 and every3 == list(all_emotions())[::3]
    assert emotion_subset("every:1") == list(all_emotions())
    with pytest.raises(ValueError, match="K >= 1"):
        emotion_subset("every:0")


def test_saved_figures_are_palette_pngs_that_look_the_same(tmp_path):
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(rng.standard_normal((80, 80)), cmap="RdBu_r")
    ax.set_title("a heatmap")
    fig.savefig(tmp_path / "truecolour.png", dpi=110, bbox_inches="tight")
    png = save_figure(fig, "heat", {"n": 1}, "a test heatmap", tmp_path / "figs")
    plt.close(fig)
    with Image.open(png) as pal, Image.open(tmp_path / "truecolour.png") as full:
        assert pal.mode == "P" and pal.size == full.size
        a = np.asarray(pal.convert("RGB"), dtype=float)
        b = np.asarray(Image.alpha_composite(Image.new("RGBA", full.size, "white"), full.convert("RGBA")).convert("RGB"),
                       dtype=float)
    assert np.abs(a - b).mean() < 1.0  # mean error in 0..255 units: the picture is the same
    assert (a[0, 0] == 255).all()  # a white background stays white
    assert png.stat().st_size < 0.7 * (tmp_path / "truecolour.png").stat().st_size
    # the same figure data gives the same bytes (committed figures do not churn)
    fig2, ax2 = plt.subplots(figsize=(5, 4))
    ax2.imshow(np.random.default_rng(0).standard_normal((80, 80)), cmap="RdBu_r")
    ax2.set_title("a heatmap")
    again = save_figure(fig2, "heat2", {"n": 1}, "a test heatmap", tmp_path / "figs")
    plt.close(fig2)
    assert again.read_bytes() == png.read_bytes()


def test_run_provenance_ignores_the_figures_a_run_rewrites(tmp_path, monkeypatch):
    import subprocess

    from emolib.study import report

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_text("old")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(report, "REPO_ROOT", tmp_path)
    assert not report.commit().endswith("+uncommitted")
    (tmp_path / "figures" / "a.png").write_text("new")  # what a run does to the committed figures
    assert not report.commit().endswith("+uncommitted")
    (tmp_path / "code.py").write_text("x = 2\n")  # a change to the code it ran
    assert report.commit().endswith("+uncommitted")


def test_computing_in_float32_returns_the_model_bit_for_bit():
    from emolib.models import computing_in, tiny_model

    model, tok = tiny_model(seed=3)
    for prm in model.parameters():  # as loaded in bfloat16: weights bfloat16, rotary buffers float32
        prm.data = prm.data.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    assert any(v.dtype == torch.float32 for v in buffers.values())
    ids = torch.tensor([tok("How do you feel today?")["input_ids"]])
    with torch.inference_mode():
        low = model(input_ids=ids).logits.float()
        with computing_in(model, "float32"):
            assert next(model.parameters()).dtype == torch.float32
            high = model(input_ids=ids).logits
        again = model(input_ids=ids).logits.float()
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(v.dtype == buffers[k].dtype and torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert torch.equal(low, again)
    assert not torch.equal(low, high) and torch.allclose(low, high, atol=0.1)  # really computed in float32
    with computing_in(model, None), computing_in(model, torch.bfloat16):  # no-ops
        assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(RuntimeError), computing_in(model, "float32"):
        raise RuntimeError("interrupted")
    assert next(model.parameters()).dtype == torch.bfloat16  # converted back after an exception too
