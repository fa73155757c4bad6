"""Benchmark: story generation and pooled capture in one process vs on a local Ray cluster.

    .venv/bin/python benchmarks/bench_ray.py [--models tiny-random smollm2-135m-instruct] [--prompts 48]
                                             [--tokens 48] [--batch 8] [--texts 96] [--workers 2]

For each model: the same story prompts (the pipeline's own, ``story_jobs`` + ``make_prompts``) are
generated into a fresh JSONL store by ``generate_to_store`` in this process, with torch on
``--workers`` threads and on 1 thread, then by ``--workers`` Ray workers of one thread each
(``RayEngine``); then the same reference stories are pooled at every layer by ``pool_corpus`` the
same ways. It checks that every store is byte-identical to the first and that the pooled means
are equal, and prints wall times and ratios, with the machine's load average before each timing
(other jobs on the same cores distort them: a multi-threaded torch process suffers most, since its
threads wait for each other). Ray's one-off costs (starting the local cluster, each worker loading
the model) are printed apart from the run itself. On a 2-core machine all setups share the same
two cores, so expect little speed-up: the point is the same bytes, on the way to a cluster.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from emolib.emotions import all_emotions
from emolib.engines.ray_engine import RayEngine, connect
from emolib.engines.sampling import SamplingSettings
from emolib.models import load_model
from emolib.study.activations import pool_corpus
from emolib.study.corpus import load_corpus
from emolib.study.generation import generate_to_store, make_prompts, story_jobs


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def bench(spec: str, args, folder: Path) -> None:
    (model, tok, info), t_load = _timed(lambda: load_model(spec))
    prompts = make_prompts(tok, story_jobs(list(all_emotions())[: args.prompts], 1, 1, seed=0))[: args.prompts]
    settings = SamplingSettings(max_new_tokens=args.tokens, batch_size=args.batch, ignore_eos=True)
    texts = load_corpus("reference")[: args.texts]
    pool_kw = dict(model_id=info.name, start=50, batch_size=8, shard_size=args.shard, max_length=512)
    print(f"\n== {info.name}: {len(prompts)} prompts x {args.tokens} new tokens, batch {args.batch} "
          f"({-(-len(prompts) // args.batch)} batches); {len(texts)} reference stories pooled at {info.n_layers} layers, "
          f"{args.shard} per shard; model load {t_load:.1f} s")
    rows = []  # (setup, generation s, pooling s, tokens generated, load before)
    stores, pooled = [], []

    def run(name, mdl, engine=None):
        before = _load()
        out = folder / f"{spec}-{len(stores)}"
        rep, t_gen = _timed(lambda: generate_to_store(mdl, tok, prompts, out.with_suffix(".jsonl"), settings, seed=0,
                                                      writer=info.name, progress=False, engine=engine))
        p, t_pool = _timed(lambda: pool_corpus(mdl, tok, texts, out, engine=engine, **pool_kw))
        rows.append((name, t_gen, t_pool, rep.new_tokens, before))
        stores.append(out.with_suffix(".jsonl").read_bytes())
        pooled.append(p)

    for threads in dict.fromkeys([args.workers, 1]):
        torch.set_num_threads(threads)
        run(f"1 process, {threads} thread(s)", model)
    eng, t_start = _timed(lambda: RayEngine(spec, workers=args.workers, cpus_per_worker=1).start())
    try:
        run(f"{args.workers} Ray workers x 1 thread", None, eng)
    finally:
        eng.shutdown()
    print(f"Ray workers start (each loads the model once): {t_start:.1f} s")
    ray_gen, ray_pool = rows[-1][1], rows[-1][2]
    print(f"{'setup':<28}{'generation s':>13}{'tok/s':>7}{'pooling s':>11}{'gen ratio':>11}{'pool ratio':>11}")
    for name, t_gen, t_pool, n_tok, before in rows:
        print(f"{name:<28}{t_gen:>13.1f}{n_tok / t_gen:>7.0f}{t_pool:>11.1f}{t_gen / ray_gen:>11.2f}"
              f"{t_pool / ray_pool:>11.2f}   ({before})")
    print("(ratio = this setup's wall time / the Ray run's: > 1 means Ray was faster)")
    same = all(b == stores[0] for b in stores)
    diff = max(float((torch.nan_to_num(p.means) - torch.nan_to_num(pooled[0].means)).abs().max()) for p in pooled)
    print(f"stores byte-identical: {same}; pooled means max |difference|: {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny-random", "smollm2-135m-instruct"])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--texts", type=int, default=96)
    ap.add_argument("--shard", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    _, t_init = _timed(lambda: connect(num_cpus=args.workers, object_store_memory=512 * 1024**2, log_to_driver=False))
    print(f"local Ray cluster with {args.workers} CPUs started in {t_init:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            bench(spec, args, Path(tmp))


if __name__ == "__main__":
    main()
