"""Engines: where the units of work of stages 01 and 02 run.

* ``None`` (the default): in the notebook's own process (:func:`run_jobs`);
* :class:`~emolib.engines.ray_engine.RayEngine`: on a Ray cluster, each worker holding its own model
  copy; results come back in plan order, so a run writes what a single process writes;
* :class:`~emolib.engines.vllm_engine.VLLMEngine`: vLLM's offline batch API (generation only; GPU).

:mod:`emolib.engines.sampling` is the batched, seeded sampler the engines run (or translate). Ray and
vLLM are optional extras, imported only when asked for. Engines depend on the core (models) and on
nothing in :mod:`emolib.study`; the study hands them its functions by reference.
"""

from __future__ import annotations

from typing import Any

from emolib.engines.jobs import optional_module, run_jobs

__all__ = ["make_engine", "optional_module", "run_jobs"]


def make_engine(engine: Any, model: str, *, workers: int = 0, gpus_per_worker: float = 0, device: str | None = None,
                dtype: str | None = None, **kwargs: Any):
    """The engine a notebook parameter names, or None for this process.

    * ``"local"`` / ``""`` / None: no engine (the model runs in the notebook's process);
    * ``"ray"``: a local Ray cluster, or the one ``$RAY_ADDRESS`` names;
    * ``"ray:auto"``, ``"ray:<head>:6379"``: join that cluster; ``"ray://<head>:10001"``: Ray Client;
    * ``"vllm"``: vLLM's offline batch API in this process (generation only; GPU; not tested in CI);
    * an engine object is returned as is.
    """
    if engine is None or engine in ("", "local"):
        return None
    if not isinstance(engine, str):
        return engine
    if engine == "vllm":
        from emolib.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, dtype=dtype, tensor_parallel_size=max(1, int(gpus_per_worker or 1)), **kwargs)
    if engine == "ray" or engine.startswith("ray:"):
        address = None if engine == "ray" else (engine if engine.startswith("ray://") else engine[len("ray:"):])
        from emolib.engines.ray_engine import RayEngine

        return RayEngine(model, address=address, workers=workers, gpus_per_worker=gpus_per_worker, device=device,
                         dtype=dtype, **kwargs)
    raise ValueError(f"Unknown engine {engine!r}: use 'local', 'ray', 'ray:<address>', 'ray://<head>:10001' or 'vllm'.")
