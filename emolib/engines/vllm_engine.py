"""Story generation on vLLM's offline batch API, for GPU users (optional; not exercised by CI).

vLLM is the engine most GPU batch jobs use for sampling: paged attention and continuous batching
make it several times faster than the Hugging Face loop in :mod:`emolib.study.generation` on a GPU.
:class:`VLLMEngine` plugs it into the same driver: ``generate_to_store(..., engine=VLLMEngine(...))``
plans the same batches, gives each item the same seed (``SamplingParams(seed=item_seed(...))``),
and writes records of the same format to the same resumable store.

What is *not* the same: vLLM's sampler is its own (its kernels, its top-p, its repetition penalty),
so its stories are not the Hugging Face loop's, token for token. Its records carry
``gen["backend"] = "vllm"``; a store written by one backend refuses to be resumed by the other.
Per-item seeds make a vLLM run repeatable on the same GPU, vLLM version and settings.

This project's machines and CI have no GPU, and vLLM is not installed there: the tests check the
import message and the record shaping with a stand-in for vLLM, never vLLM itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from emolib.engines.jobs import optional_module

VLLM_MISSING = ("engine='vllm' needs vLLM, which emolib does not install: `pip install vllm` on a machine with an "
                "NVIDIA GPU (see docs/scaling.md). It is an optional backend that this project's CI does not "
                "exercise (no GPU there); engine='local' or 'ray' runs everywhere.")


def _vllm():
    return optional_module("vllm", VLLM_MISSING)


def _resolve_spec(spec: str) -> tuple[str, str]:
    """``(what vLLM loads, the writer's name)``: the embedded default is its converted folder."""
    from emolib.models import (
        _DEFAULT_ALIASES,
        _GEMMA_ALIASES,
        _TINY_ALIASES,
        DEFAULT_MODEL,
        GEMMA_BASE_MODEL,
        embedded_model_dir,
    )

    if spec in _TINY_ALIASES:
        raise ValueError("The tiny random model is built in-process; vLLM cannot load it. Use engine='local'.")
    if spec in _DEFAULT_ALIASES or spec in _GEMMA_ALIASES:
        return str(embedded_model_dir(spec)), (DEFAULT_MODEL if spec in _DEFAULT_ALIASES else GEMMA_BASE_MODEL)
    return spec, spec


class VLLMEngine:
    """Generation on ``vllm.LLM``; ``llm``/``tokenizer`` may be given (an existing instance, or a test stand-in).

    ``jobs_per_call`` plan batches go to vLLM at once (it schedules the requests itself); each
    finished call is written before the next starts, so an interrupted run loses at most one call.
    Other keyword arguments go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``).
    """

    kind = "vllm"
    gen_tag = {"backend": "vllm"}

    def __init__(self, model: str, *, dtype: str | None = None, tensor_parallel_size: int = 1,
                 jobs_per_call: int = 16, llm: Any = None, tokenizer: Any = None, **llm_kwargs: Any) -> None:
        vllm = _vllm()
        self.path, self.name = _resolve_spec(str(model))
        self.jobs_per_call = max(1, int(jobs_per_call))
        if llm is None:
            kwargs = dict(llm_kwargs, tensor_parallel_size=int(tensor_parallel_size))
            if dtype not in (None, "auto"):
                kwargs["dtype"] = dtype
            llm = vllm.LLM(model=self.path, **kwargs)
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        if getattr(self.tokenizer, "pad_token", None) is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.dtype = dtype or "auto"

    def __repr__(self) -> str:
        return f"VLLMEngine({self.name!r})"

    def describe(self):
        """``(tokenizer, ModelInfo)``, as :meth:`emolib.engines.ray_engine.RayEngine.describe`."""
        from emolib.models import ModelInfo

        cfg = _hf_config(self.llm)
        info = ModelInfo(name=self.name, source="vllm", revision=str(getattr(cfg, "_commit_hash", None) or "unknown"),
                         n_layers=int(getattr(cfg, "num_hidden_layers", 0) or 0),
                         width=int(getattr(cfg, "hidden_size", 0) or 0),
                         has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
                         dtype=str(self.dtype), device="cuda")
        return self.tokenizer, info

    def sampling_params(self, settings, seed: int):
        """vLLM's ``SamplingParams`` for one item: our settings, the item's seed, our end tokens."""
        from emolib.engines.sampling import _eos_ids

        vllm = _vllm()
        return vllm.SamplingParams(
            n=1, temperature=float(settings.temperature), top_p=float(settings.top_p) if settings.temperature > 0 else 1.0,
            top_k=int(settings.top_k) if settings.top_k and settings.temperature > 0 else -1,
            repetition_penalty=float(settings.repetition_penalty or 1.0), max_tokens=int(settings.max_new_tokens),
            seed=int(seed), ignore_eos=bool(settings.ignore_eos),
            stop_token_ids=[] if settings.ignore_eos else sorted(_eos_ids(None, self.tokenizer)),
            skip_special_tokens=True)

    def map(self, fn: Callable[..., Any], jobs: Sequence[dict[str, Any]]) -> Iterator[Any]:
        """Runs :func:`emolib.engines.sampling.sample_batch` jobs (the only kind vLLM serves); results in job order."""
        from emolib.engines.sampling import sample_batch

        if fn is not sample_batch:
            raise NotImplementedError(f"The vLLM engine generates text only; it cannot run {fn.__name__}. "
                                      "Use engine='local' or 'ray' for pooled capture.")
        for start in range(0, len(jobs), self.jobs_per_call):
            group = jobs[start:start + self.jobs_per_call]
            prompts, params = [], []
            for job in group:
                for text, seed in zip(job["texts"], job["seeds"]):
                    # token ids, not text: vLLM would add special tokens that the HF path does not
                    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                    prompts.append({"prompt_token_ids": list(ids)})
                    params.append(self.sampling_params(job["settings"], seed))
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            k = 0
            for job in group:
                n = len(job["texts"])
                yield [completion_of(o) for o in outs[k:k + n]]
                k += n

    def shutdown(self) -> None:
        """Free the GPU memory held by vLLM."""
        import gc

        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def completion_of(request_output):
    """A vLLM ``RequestOutput`` as emolib's :class:`~emolib.engines.sampling.Completion`."""
    from emolib.engines.sampling import Completion

    out = request_output.outputs[0]
    ids = list(out.token_ids)
    return Completion(text=out.text, n_new_tokens=len(ids), finish="eos" if out.finish_reason == "stop" else "length",
                      token_ids=ids)


def _hf_config(llm):
    for path in ("llm_engine.model_config.hf_config", "model_config.hf_config"):
        obj = llm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None
