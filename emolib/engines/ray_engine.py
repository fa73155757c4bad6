"""Ray as the engine for story generation (01) and pooled capture (02), for runs that outgrow one machine.

The single-process code is the reference, and a Ray run is built to write the same bytes:

* **The driver keeps the plan and the store.** :func:`emolib.study.generation.generate_to_store` and
  :func:`emolib.study.activations.pool_corpus` cut the work exactly as they do alone (the same
  length-sorted generation batches, the same pooling chunks) and write results with the same code.
  Only the middle step, "run this unit on a model", goes to Ray: whole units, so no batch is ever
  re-cut (a batch's shape can change the last bit of a logit, and so a sampled token).
* **Results are committed in plan order.** Workers finish in any order; the driver buffers what
  arrives early (at most a few units per worker) and appends unit *k* only after units
  *0..k-1*. So the JSONL store and the shard folder are byte-identical to a single-process run's
  (shards hold no clock time), and a driver crash leaves a prefix that a rerun
  resumes, as it does today.
* **A worker is a Ray actor that loads the model once**, from a model *spec* (``"tiny-random"``,
  a folder, a Hub id ...), never from a pickled model, and runs the same module-level functions
  as the local path (``engines.sampling.sample_batch``, ``study.activations.pool_chunk``) on it. Each item's random stream is seeded from
  ``(run seed, item id)``, so which worker ran it does not matter.
* **Failures.** A worker whose process dies (a crash, an out-of-memory kill, a preempted node) is
  restarted by Ray (``max_restarts``) and the call it was running is retried
  (``max_task_retries``). Units are committed only by the driver, once, keyed by id, so a retried
  unit is never written twice. When the retries run out the run stops with an error; running it
  again resumes from what is on disk.

Use it from Python::

    from emolib.engines.ray_engine import RayEngine
    with RayEngine("smollm2-135m-instruct", workers=2) as eng:      # local cluster (or $RAY_ADDRESS)
        tok, info = eng.describe()
        generate_to_store(None, tok, prompts, "raw.jsonl", settings, seed=0, writer=info.name, engine=eng)

or from the notebooks with the papermill parameter ``engine`` (``"ray"``, ``"ray:auto"``,
``"ray://head:10001"``); see docs/scaling.md. ``ray`` is an optional extra: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from emolib.engines.jobs import optional_module

RAY_MISSING = ("The Ray engine needs the optional `ray` package: `pip install -e '.[ray]'` in this repository "
               "(or `pip install ray==2.60.0`), on the driver and on every node of the cluster.")


class WorkerFailed(RuntimeError):
    """A unit could not be run even after Ray's retries; what was committed before it is on disk."""


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _ray():
    return optional_module("ray", RAY_MISSING)


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_memory: int | None = None, loopback: bool = True, **init_kwargs: Any) -> bool:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``), or
    start a local one when ``address`` is None and ``$RAY_ADDRESS`` is unset.

    A local cluster is sized by ``num_cpus``/``num_gpus`` (default: the machine's) and, with
    ``loopback`` (default), listens on 127.0.0.1 only: nothing outside this machine can join it.
    Returns True if this call connected, False if Ray was already initialised (then nothing changes).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and loopback and "ray" not in sys.modules:
        # Ray picks the node address when it is imported; this makes a local cluster bind to loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                      include_dashboard=False)
    else:
        kwargs["address"] = address
    kwargs.update(init_kwargs)
    ray.init(**kwargs)
    return True


class _Worker:
    """The body of a Ray actor: one model, loaded once; runs ``fn(model, tokenizer, **job)``."""

    def __init__(self, spec: str, device: str | None, dtype: str | None, device_map: str | None, threads: int,
                 chaos: str | None) -> None:
        import torch

        from emolib.models import load_model

        if threads > 0:
            torch.set_num_threads(threads)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # weight-loading bars would stream into the driver's output
        except ImportError:
            pass
        self.model, self.tokenizer, self.info = load_model(spec, device=device, dtype=dtype, device_map=device_map)
        self.chaos = chaos
        self.calls = 0

    def describe(self):
        return self.tokenizer, self.info

    def stats(self) -> dict[str, int]:
        """This worker's process id and the number of calls it has run (since its last restart)."""
        return {"pid": os.getpid(), "calls": self.calls}

    def run(self, fn: Callable[..., Any], job: dict[str, Any]) -> Any:
        self.calls += 1
        if self.chaos and self.calls == 2 and _claim(self.chaos):
            os._exit(1)  # a failure drill: this process dies mid-run, as on a preempted node
        return fn(self.model, self.tokenizer, **job)


def _claim(path: str) -> bool:
    """Create ``path`` if it does not exist yet; True for exactly one caller across processes."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


class RayEngine:
    """Runs units of work on Ray actors, each holding its own copy of ``model`` (a spec string).

    ``workers=0`` sizes the pool to the cluster: one worker per ``gpus_per_worker`` GPUs, or per
    ``cpus_per_worker`` CPUs when ``gpus_per_worker`` is 0. A worker with several GPUs loads the
    model sharded over them (``device_map="auto"``). ``depth`` calls are queued per worker so a
    worker never waits for the driver. A worker whose process dies is restarted up to
    ``max_restarts`` times, its calls retried as often. ``init`` goes to :func:`connect` (e.g.
    ``num_cpus`` of a local cluster); workers that are not all up within ``start_timeout`` seconds
    (the cluster lacks the resources, or a model loads forever) fail with a message. ``chaos``
    (tests and failure drills): the path of a marker file; the first worker to start its second
    call creates it and kills its own process.
    """

    kind = "ray"
    gen_tag: dict[str, Any] = {}  # the same sampler as the local path: records are identical, gen unchanged

    def __init__(self, model: str, *, address: str | None = None, workers: int = 0, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, device: str | None = None, dtype: str | None = None,
                 device_map: str | None = None, max_restarts: int = 3, depth: int = 2,
                 init: dict[str, Any] | None = None, start_timeout: float = 1800, chaos: str | None = None) -> None:
        self.model = str(model)
        self.address = address
        self.n_workers = int(workers)
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.device, self.dtype, self.device_map = device, dtype, device_map
        self.max_restarts = int(max_restarts)
        self.depth = max(1, int(depth))
        self.init = dict(init or {})
        self.start_timeout = start_timeout
        self.chaos = chaos
        self._actors: list[Any] = []
        self._started_ray = False
        self._described: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "local"
        return f"RayEngine({self.model!r}, cluster={where}, workers={len(self._actors) or self.n_workers or 'auto'})"

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> RayEngine:
        """Connect (or start a local cluster), create the workers and wait until each has its model."""
        if self._actors:
            return self
        self._started_ray = connect(self.address, **self.init)
        ray = _ray()
        n = self.n_workers or self._fit_workers(ray.cluster_resources())
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "max_restarts": self.max_restarts,
                                "max_task_retries": self.max_restarts}
        if self.gpus_per_worker:
            opts["num_gpus"] = self.gpus_per_worker
        device_map = self.device_map or ("auto" if self.gpus_per_worker and self.gpus_per_worker > 1 else None)
        threads = max(1, int(self.cpus_per_worker))
        actor = ray.remote(**opts)(_Worker)
        self._actors = [actor.remote(self.model, self.device, self.dtype, device_map, threads, self.chaos)
                        for _ in range(n)]
        try:  # waits for every model to load, and surfaces a model that fails to, here
            ray.get([a.stats.remote() for a in self._actors], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise WorkerFailed(f"{n} Ray worker(s) for {self.model!r} did not start within {self.start_timeout:.0f} s: "
                               f"does the cluster have {opts.get('num_gpus', 0)} GPU(s) and {opts['num_cpus']} CPU(s) "
                               f"free for each? ({ray.available_resources()} available now)") from None
        except ray.exceptions.RayError as err:
            self.shutdown()
            raise WorkerFailed(f"The Ray workers could not load {self.model!r}: {err}") from err
        return self

    def _fit_workers(self, resources: dict[str, float]) -> int:
        if self.gpus_per_worker:
            n = int(resources.get("GPU", 0) // self.gpus_per_worker)
            need = f"{self.gpus_per_worker} GPU(s)"
        else:
            n = int(resources.get("CPU", 0) // max(self.cpus_per_worker, 1e-9))
            need = f"{self.cpus_per_worker} CPU(s)"
        if n < 1:
            raise WorkerFailed(f"The Ray cluster ({resources}) has no room for one worker needing {need}.")
        return n

    def shutdown(self) -> None:
        """Stop the workers (and the local cluster, if this engine started it)."""
        if not ray_available():
            return
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- what the workers hold ------------------------------------------------------------------
    @property
    def workers(self) -> list[Any]:
        """The actor handles (starting them if needed)."""
        return self.start()._actors

    def describe(self):
        """``(tokenizer, ModelInfo)`` of the workers' model, so the driver needs no model of its own."""
        if self._described is None:
            self._described = _ray().get(self.workers[0].describe.remote())
        return self._described

    # -- running work ---------------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], jobs: Sequence[dict[str, Any]]) -> Iterator[Any]:
        """``fn(model, tokenizer, **job)`` on the workers; yields results in job order as they complete.

        Jobs go to the least-loaded worker; at most ``(depth + 1) * workers`` results wait in the
        driver for an earlier one. If the consumer stops early, queued calls are cancelled.
        """
        ray = _ray()
        actors = self.workers
        busy = [0] * len(actors)
        window = (self.depth + 1) * len(actors)
        pending: dict[Any, tuple[int, int]] = {}
        ready: dict[int, Any] = {}
        sent = emitted = 0
        try:
            while emitted < len(jobs):
                while sent < len(jobs) and sent - emitted < window:
                    w = min(range(len(actors)), key=busy.__getitem__)
                    if busy[w] >= self.depth:
                        break
                    pending[actors[w].run.remote(fn, jobs[sent])] = (sent, w)
                    busy[w] += 1
                    sent += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    k, w = pending.pop(ref)
                    busy[w] -= 1
                    try:
                        ready[k] = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        raise WorkerFailed(f"Unit {k} of {len(jobs)} failed on a Ray worker after "
                                           f"{self.max_restarts} restart(s) allowed; units before it are "
                                           f"committed, rerun to resume. Cause: {err}") from err
                while emitted in ready:
                    yield ready.pop(emitted)
                    emitted += 1
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished, or not cancellable: its result is simply dropped
                    pass
