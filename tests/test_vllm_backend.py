"""The optional vLLM backend, without vLLM (no GPU in CI): the import message, and that a stand-in
with vLLM's offline API yields records of the single-process format, seeded per item."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest

from emolib.engines.sampling import SamplingSettings, item_seed
from emolib.engines.vllm_engine import VLLM_MISSING, VLLMEngine
from emolib.study.generation import Prompt, generate_to_store
from emolib.study.store import JsonlStore

SETTINGS = SamplingSettings(max_new_tokens=5, temperature=0.7, top_k=0, batch_size=2)


class _Params:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _FakeLLM:
    """vLLM's ``LLM.generate`` contract: one output per prompt, in order; text from the item's seed."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outs = []
        for p, sp in zip(prompts, params):
            ids = [100 + (sp.seed + j) % 50 for j in range(sp.max_tokens - (sp.seed % 2))]
            finish = "stop" if sp.seed % 2 else "length"
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text=f"story {sp.seed} from {len(p['prompt_token_ids'])} tokens", token_ids=ids, finish_reason=finish)]))
        return outs


@pytest.fixture()
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.SamplingParams = _Params
    mod.LLM = None  # never built: the tests hand in their own stand-in
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def _prompts(tok, n=5):
    return [Prompt(id=f"v{i}", text=tok.apply_chat_template([{"role": "user", "content": "Tell a story. " * (i + 1)}],
                                                            tokenize=False, add_generation_prompt=True),
                   meta={"kind": "story", "emotion": "calm"}) for i in range(n)]


def test_missing_vllm_says_what_to_do(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ImportError) as err:
        VLLMEngine("Qwen/Qwen2.5-7B-Instruct")
    assert str(err.value) == VLLM_MISSING
    assert "pip install vllm" in VLLM_MISSING and "does not exercise" in VLLM_MISSING


def test_vllm_records_have_the_single_process_format(fake_vllm, tiny, tmp_path):
    model, tok = tiny
    prompts = _prompts(tok)
    llm = _FakeLLM()
    eng = VLLMEngine("smollm2-135m-instruct", llm=llm, tokenizer=tok, jobs_per_call=2)
    rep = generate_to_store(None, tok, prompts, tmp_path / "v.jsonl", SETTINGS, seed=3, writer="w", progress=False,
                            engine=eng)
    generate_to_store(model, tok, prompts, tmp_path / "hf.jsonl", SETTINGS, seed=3, writer="w", progress=False)
    got, want = JsonlStore(tmp_path / "v.jsonl").read(), JsonlStore(tmp_path / "hf.jsonl").read()
    assert rep.engine == "vllm" and rep.n_generated == 5 and len(llm.calls) == 2  # 3 plan batches, 2 per call
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        assert {k: g[k] for k in ("id", "prompt", "writer", "seed", "batch", "n_prompt_tokens", "emotion")} == \
               {k: w[k] for k in ("id", "prompt", "writer", "seed", "batch", "n_prompt_tokens", "emotion")}
        assert g["gen"] == dict(w["gen"], backend="vllm")
        assert g["output"] == f"story {g['seed']} from {g['n_prompt_tokens']} tokens"
        assert g["finish"] == ("eos" if g["seed"] % 2 else "length")
    params = [sp for _, ps in llm.calls for sp in ps]
    assert sorted(sp.seed for sp in params) == sorted(item_seed(3, p.id) for p in prompts)
    sp = params[0]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.repetition_penalty) == (0.7, 0.95, -1, 5, 1.1)
    assert tok.convert_tokens_to_ids("<|im_end|>") in sp.stop_token_ids
    # a store written by one sampler is not resumed by the other
    with pytest.raises(ValueError, match="new run folder"):
        generate_to_store(model, tok, prompts, tmp_path / "v.jsonl", SETTINGS, seed=3, writer="w", progress=False)


def test_vllm_engine_generates_only(fake_vllm, tiny):
    from emolib.capture import pooled_means

    _, tok = tiny
    eng = VLLMEngine("Qwen/Qwen2.5-7B-Instruct", llm=_FakeLLM(), tokenizer=tok)
    with pytest.raises(NotImplementedError, match="generates text only"):
        next(eng.map(pooled_means, [{"texts": ["x"]}]))
    with pytest.raises(ValueError, match="tiny random model"):
        VLLMEngine("tiny-random", llm=_FakeLLM(), tokenizer=tok)
