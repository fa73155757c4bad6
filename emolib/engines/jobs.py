"""Running units of work, in this process or on an engine's workers, and importing optional engines.

A unit is ``fn(model, tokenizer, **job)`` with a module-level ``fn`` (so a worker can import it by
name): a generation batch (:func:`emolib.engines.sampling.sample_batch`) or a pooling chunk
(:func:`emolib.study.activations.pool_chunk`). The driver cuts the units and writes the results;
an engine only runs them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def optional_module(name: str, missing: str):
    """Import the optional package ``name``, or raise ImportError(``missing``): a message saying what to do."""
    if importlib.util.find_spec(name) is None:
        raise ImportError(missing)
    return importlib.import_module(name)


def run_jobs(fn: Callable[..., Any], jobs: Iterable[dict[str, Any]], model=None, tokenizer=None,
             engine=None) -> Iterator[Any]:
    """``fn(model, tokenizer, **job)`` for each job, results in job order: in this process when
    ``engine`` is None, else on the engine's workers (their own model copies)."""
    if engine is not None:
        return engine.map(fn, list(jobs))
    if model is None:
        raise ValueError("No model and no engine: pass the model, or an engine that holds one.")
    return (fn(model, tokenizer, **job) for job in jobs)
