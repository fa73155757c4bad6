"""Benchmark: float32 vs bfloat16 on this CPU -- speed, and whether the study's numbers survive.

    .venv/bin/python benchmarks/bench_dtype.py [--stories 64] [--emotions 29] [--threads 2] [--run runs/default]

The default profile runs with ``dtype = "auto"``: bfloat16 on a CPU with native bfloat16
(AVX512-BF16 or AMX, :func:`emolib.models.cpu_has_native_bf16`), float32 elsewhere. This script is
the evidence for that choice. It loads the embedded model twice (float32, bfloat16) and times

* pooling ``--stories`` reference stories (the read-out behind every emotion vector, 02), and
  compares the two dtypes' pooled means per block after centring over stories (the emotion
  vectors are differences of such means, so their agreement is what matters);
* the self-report read-out of 06 steered by ``--emotions`` vectors of ``--run`` (every k-th
  emotion) at 0.5 and 1 x the run's window, and correlates the two dtypes' valence/arousal shifts.

Prints tokens/s, seconds, ratios and agreement; a few minutes on 2 idle cores. On a CPU without
native bfloat16 the bfloat16 side is emulated and slow: the script says so and still runs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from emolib.capture import pooled_means
from emolib.models import cpu_has_native_bf16, load_model
from emolib.study import self_report as sr
from emolib.study.corpus import load_corpus
from emolib.vectors import EmotionVectors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--stories", type=int, default=64)
    ap.add_argument("--emotions", type=int, default=29, help="vectors steered in the self-report check (0: skip)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", default="runs/default", help="a finished run: its vectors and window")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native bfloat16 on this CPU: {cpu_has_native_bf16()}")
    texts = [r["text"] for r in random.Random(0).sample(load_corpus("reference"), args.stories)]
    run = Path(args.run)
    steer = args.emotions > 0 and (run / "vectors.safetensors").exists() and (run / "causal/self_report.json").exists()
    if args.emotions > 0 and not steer:
        print(f"{run} has no vectors/self-report yet: the steering check is skipped")
    if steer:
        vectors = EmotionVectors.load(run / "vectors.safetensors")
        rep = json.loads((run / "causal/self_report.json").read_text())["report"]
        window, layer = float(rep["window"]), int(rep["layer"])
        emos = vectors.emotions[:: max(1, len(vectors.emotions) // args.emotions)][: args.emotions]

    pooled, seconds, shifts = {}, {}, {}
    for dt in ("float32", "bfloat16"):
        model, tok, _ = load_model(args.model, dtype=dt)
        t = time.perf_counter()
        p = pooled_means(model, tok, texts, batch_size=args.batch, start=50)
        seconds[("pool", dt)] = time.perf_counter() - t
        pooled[dt] = p.means.float()
        print(f"{dt:>8}: pooled {len(texts)} stories, {p.total_tokens} tokens in {seconds[('pool', dt)]:.1f} s "
              f"= {p.total_tokens / seconds[('pool', dt)]:.0f} tok/s", flush=True)
        if steer:
            t = time.perf_counter()
            shifts[dt] = sr.dose_response(model, tok, vectors, emos, window, [0.5, 1.0], layer)
            seconds[("steer", dt)] = time.perf_counter() - t
            print(f"{dt:>8}: self-report under {len(emos)} vectors x 2 strengths in {seconds[('steer', dt)]:.1f} s",
                  flush=True)

    print(f"\npooling speed-up bfloat16 / float32: {seconds[('pool', 'float32')] / seconds[('pool', 'bfloat16')]:.2f}x")
    a, b = pooled["float32"], pooled["bfloat16"]
    a, b = a - a.mean(0), b - b.mean(0)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(0)  # [layers]
    print(f"pooled means, centred over stories: cos(float32, bfloat16) per block min {cos.min():.5f}, "
          f"mean {cos.mean():.5f}")
    if steer:
        print(f"self-report speed-up bfloat16 / float32: "
              f"{seconds[('steer', 'float32')] / seconds[('steer', 'bfloat16')]:.2f}x")
        for k in ("valence", "arousal"):
            x, y = np.asarray(shifts["float32"][k]), np.asarray(shifts["bfloat16"][k])
            for j, m in enumerate((0.5, 1.0)):
                r = np.corrcoef(x[:, j], y[:, j])[0, 1]
                print(f"{k} shift at {m:g} x window: r(float32, bfloat16) = {r:.4f}, mean |diff| "
                      f"{np.abs(x[:, j] - y[:, j]).mean():.3f} nats (sd across emotions {x[:, j].std():.3f})")


if __name__ == "__main__":
    main()
