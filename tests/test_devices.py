"""Big-model plumbing that a CPU can check: device maps and dtypes reach transformers, hooks keep
one copy of each vector per (device, dtype), and everything runs in bfloat16.

A model really sharded over GPUs cannot run here (no GPU in CI); docs/scaling.md says so.
"""

from __future__ import annotations

import pytest
import torch

from emolib.capture import PerDevice, pooled_means
from emolib.engines.sampling import SamplingSettings, sample_batch
from emolib.models import _pick_device_map, load_model
from emolib.steering import steer


@pytest.fixture(scope="module")
def tiny_bf16():
    model, tok, info = load_model("tiny-random", dtype="bfloat16")
    assert info.dtype == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    return model, tok


def test_per_device_keeps_one_copy_per_device_and_dtype():
    v = torch.arange(4, dtype=torch.float32)
    placed = PerDevice(v)
    assert placed.like(torch.zeros(2)) is v  # already there: no copy
    half = placed.like(torch.zeros(2, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and placed.like(torch.ones(3, dtype=torch.bfloat16)) is half
    assert placed.like(torch.zeros(1, dtype=torch.bfloat16), torch.float64).dtype == torch.float64
    assert len(placed.copies) == 3


def test_steering_hook_converts_its_vector_once(tiny_bf16, monkeypatch):
    model, tok = tiny_bf16
    made = []
    real = PerDevice.like

    def counting(self, other, dtype=None):
        if (other.device, dtype or other.dtype) not in self.copies:
            made.append((other.device, dtype or other.dtype))
        return real(self, other, dtype)

    monkeypatch.setattr(PerDevice, "like", counting)
    ids = tok("A quiet morning by the river, and then", return_tensors="pt")["input_ids"]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), steer(model, v, layers=[1, 2], strength=1.0) as st:
        for _ in range(3):
            model(ids)
    # float32 deltas, bfloat16 blocks: one conversion per steered block, not one per forward call
    assert made == [(torch.device("cpu"), torch.bfloat16)] * 2
    assert st["deltas"][1].dtype == torch.float32


def test_bfloat16_capture_steering_and_sampling(tiny_bf16):
    model, tok = tiny_bf16
    texts = ["The train was late again, so she walked the long way home past the bakery.", "Hello there."]
    pooled = pooled_means(model, tok, texts, start=2, batch_size=2)
    assert pooled.means.dtype == torch.float32 and torch.isfinite(pooled.means).all()
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base = model(ids).logits
        with steer(model, v, layers=[2], strength=0.0, norms=3.0):
            same = model(ids).logits
        with steer(model, v, layers=[2], strength=4.0, norms=3.0):
            moved = model(ids).logits
    assert torch.equal(base, same) and not torch.equal(base, moved)
    s = SamplingSettings(max_new_tokens=6, temperature=0.9)
    a = sample_batch(model, tok, texts, [1, 2], s)
    b = sample_batch(model, tok, texts, [1, 2], s)
    assert [x.token_ids for x in a] == [x.token_ids for x in b] and all(x.n_new_tokens == 6 for x in a)


def test_device_map_auto_only_where_several_gpus(monkeypatch):
    assert _pick_device_map("cpu", None) is None
    assert _pick_device_map(None, "balanced") == "balanced"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _pick_device_map(None, None) == "auto" and _pick_device_map("auto", None) == "auto"
    assert _pick_device_map("cuda:1", None) is None  # a device the user chose is respected
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _pick_device_map("auto", None) is None


def test_load_model_passes_device_map_and_dtype_through(monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, tok, info = load_model("smollm2-135m-instruct", dtype="bfloat16", device_map="auto")
    assert seen["device_map"] == "auto" and seen["dtype"] == torch.bfloat16
    assert info.dtype == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    out = sample_batch(model, tok, [tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                            add_generation_prompt=True)], [0],
                       SamplingSettings(max_new_tokens=4, temperature=0.0))
    assert out[0].n_new_tokens >= 1 or out[0].finish == "eos"


def test_concurrent_gguf_conversions_keep_the_first_complete_folder(tmp_path, monkeypatch):
    """Ray workers starting together on a fresh node all convert the embedded GGUF; a conversion
    that finishes second must not delete the folder another worker is already loading from."""
    import json

    import transformers

    from emolib import models

    out = tmp_path / "cache" / "model"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really a gguf")

    class Fake:
        hf_quantizer = None
        config = type("C", (), {})()

        def save_pretrained(self, folder):
            (folder / "weights").write_text("ours")
            out.mkdir(parents=True)  # meanwhile, another process completes the same conversion
            (out / "weights").write_text("theirs")
            (out / "emolib_source.json").write_text(json.dumps({"sha256": "x"}))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: type("T", (), {"save_pretrained": lambda self, f: None})())
    models._convert_gguf(gguf, out)
    assert (out / "weights").read_text() == "theirs"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # our temporary folder is gone
