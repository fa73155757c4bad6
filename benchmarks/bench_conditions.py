"""Benchmark: steering conditions one at a time vs side by side (the stage-06 sweeps).

    .venv/bin/python benchmarks/bench_conditions.py [--emotions 57] [--rows 64] [--dtype auto] [--run runs/default]
    .venv/bin/python benchmarks/bench_conditions.py --choices [--dtype bfloat16|float32]

Stage 06 asks the same few prompts (self-report: 6 prompts of about 45 tokens) under hundreds of
steering conditions. One condition at a time, each forward pass is a batch of 6 short rows; side by
side (:func:`emolib.study.scoring.conditions_logprobs`), the unsteered prefix of each prompt (system
and user turn) runs once and only the steered tail runs, one condition per batch row. This script
times both on the self-report read-out with every k-th emotion vector of ``--run`` at its window and
checks they agree: it prints seconds, conditions per second, the ratio and the largest difference
of the valence / arousal shifts against their spread across emotions.

``--choices`` runs the same comparison on the pleasant-vs-aversive choice (16 items, the unsteered
baseline, 6 random directions and 3 emotion vectors at 1 x window): the change in P(pleasant) by
both paths, and the largest difference. Run it with ``--dtype bfloat16`` and ``--dtype float32``: it
is the evidence for scoring the forced choices in float32 (``choice_dtype`` in 06).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from emolib.models import load_model
from emolib.study import self_report as sr
from emolib.study.controls import random_directions
from emolib.study.scoring import last_token_logits, option_logprobs, option_probs
from emolib.vectors import EmotionVectors


def one_at_a_time(model, tok, ro, steerings, batch: int) -> np.ndarray:
    """``[S, P, W]`` word log-probs, one forward pass of all prompts per condition (the earlier path;
    one-token words only, which is every list word in the embedded model's tokenizer)."""
    out = np.zeros((len(steerings), len(ro.prompts), len(ro.words)))
    first = [[ids[0] for ids in row] for row in ro.word_ids]
    for s, st in enumerate(steerings):
        logits = last_token_logits(model, tok, [p.ids for p in ro.prompts], st, scopes=lambda i: (ro.spans[i],),
                                   batch_size=batch)
        lp = torch.log_softmax(logits, dim=-1)
        for i in range(len(ro.prompts)):
            out[s, i] = lp[i, first[i]].numpy()
    return out


def choices_one_at_a_time(model, tok, items, pleasant_first, steerings, batch: int) -> np.ndarray:
    """``[S]`` mean P(pleasant) per condition, all items of a condition in one batch (the earlier path)."""
    prompts = [it.prompt.ids for it in items]
    spans = [(it.prompt.spans["assistant"][0], len(it.prompt.ids)) for it in items]
    out = []
    for st in steerings:
        logits = last_token_logits(model, tok, prompts, st, scopes=lambda i: (spans[i],), batch_size=batch)
        p = option_probs(option_logprobs(logits, [it.token_ids for it in items]))[0][:, 0].numpy()
        out.append(float(np.mean(np.where(pleasant_first, p, 1 - p))))
    return np.array(out)


def compare_choices(model, tok, vectors, window: float, layer: int, batch: int) -> None:
    items, pf = sr.choice_items(tok, 8, 0)
    conds = ([None] + [vectors.steering(r, window, layers=layer) for r in random_directions(vectors.width, 6, 5)]
             + [vectors.steering(e, window, layers=layer) for e in ("happy", "afraid", "calm") if e in vectors.emotions])
    a = choices_one_at_a_time(model, tok, items, pf, conds, batch)
    b = sr.p_pleasant_many(model, items, pf, conds)
    print(f"P(pleasant) unsteered: one at a time {a[0]:.4f}, side by side {b[0]:.4f}")
    print("change, one at a time:", np.round(a[1:] - a[0], 4))
    print("change, side by side: ", np.round(b[1:] - b[0], 4))
    print(f"largest |difference| of the changes: {np.abs((a[1:] - a[0]) - (b[1:] - b[0])).max():.4f}; "
          f"their spread (sd): {np.std(a[1:] - a[0]):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--emotions", type=int, default=57, help="every k-th emotion so that about this many are steered")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", default="runs/default", help="a finished run: its vectors and window")
    ap.add_argument("--choices", action="store_true", help="compare the two paths on the forced choice instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    if not (run / "causal/self_report.json").exists():
        raise SystemExit(f"{run} has no finished stage 06 (causal/self_report.json): run `make reproduce` first.")
    rep = json.loads((run / "causal/self_report.json").read_text())["report"]
    vectors = EmotionVectors.load(run / "vectors.safetensors")
    model, tok, info = load_model(args.model, dtype=args.dtype)
    if args.choices:
        print(f"{info.name} ({info.dtype}); choice read-out at {rep['window']:.3f} x norm, block {rep['layer']}")
        compare_choices(model, tok, vectors, rep["window"], rep["layer"], args.batch)
        return
    emos = vectors.emotions[:: max(1, len(vectors.emotions) // args.emotions)]
    steerings = [vectors.steering(e, rep["window"], layers=rep["layer"]) for e in emos]
    ro = sr.make_readout(tok)
    if any(len(ids) > 1 for row in ro.word_ids for ids in row):
        raise SystemExit("This tokenizer splits some list words; the one-at-a-time reference here reads first tokens only.")
    print(f"{info.name} ({info.dtype}); {len(ro.prompts)} prompts, {len(ro.words)} words; {len(steerings)} conditions "
          f"+ baseline at {rep['window']:.3f} x norm, block {rep['layer']}; {args.threads} threads")

    timings, shifts = {}, {}
    for name, fn in (("one at a time", lambda c: one_at_a_time(model, tok, ro, c, args.batch)),
                     (f"side by side ({args.rows} rows)", lambda c: sr.word_logprobs_many(model, ro, c, args.rows))):
        fn([None] + steerings[:2])  # warm-up
        t = time.perf_counter()
        lp = fn([None] + steerings)
        timings[name] = time.perf_counter() - t
        shifts[name] = {k: sr.log_odds(lp.reshape(-1, lp.shape[-1]), *ro.sets[k]).reshape(lp.shape[:2]).mean(1)[1:]
                        - sr.log_odds(lp[0], *ro.sets[k]).mean() for k in ro.sets}
        print(f"{name:>24}: {timings[name]:6.1f} s, {(len(steerings) + 1) / timings[name]:6.1f} conditions/s")
    (a, b) = timings.values()
    print(f"ratio: {a / b:.1f}x")
    (sa, sb) = shifts.values()
    for k in ro.sets:
        diff = np.abs(sa[k] - sb[k]).max()
        print(f"{k}: largest |shift difference| {diff:.4f} nats against a spread (sd across emotions) of "
              f"{sa[k].std():.3f}; r = {np.corrcoef(sa[k], sb[k])[0, 1]:.5f}")


if __name__ == "__main__":
    main()
