"""Monitored vs plain generation: what does live emotion monitoring cost?

    .venv/bin/python benchmarks/bench_monitor.py                 # default model, 171 emotions
    .venv/bin/python benchmarks/bench_monitor.py --vectors runs/default/vectors.safetensors
    .venv/bin/python benchmarks/bench_monitor.py --model tiny-random --new-tokens 16 --repeats 2

Both paths decode the same prompt greedily for exactly ``--new-tokens`` tokens (batch 1, KV
cache). The monitored path scores every token on all emotions at the monitored layer(s), smooths,
checks the alert rules and calls a (cheap) callback; it also runs the one extra cached step that
scores the last token (``score_last``), reported separately. Runs alternate plain / monitored so
a shared machine's load drift hits both; the median of the per-run times is compared. Goal:
monitored / plain <= 1.05. Vectors' values do not change the cost, so random vectors of the
right shape stand in when no ``--vectors`` file is given.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _vectors(path: str | None, width: int, layer: int):
    from emolib.emotions import all_emotions
    from emolib.vectors import EmotionVectors

    if path:
        return EmotionVectors.load(path)
    g = torch.Generator().manual_seed(0)
    names = list(all_emotions())
    return EmotionVectors(vectors=torch.randn(1, len(names), width, generator=g), emotions=names, layers=[layer],
                          norms=torch.ones(1), default_layer=layer, center=torch.zeros(1, width))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--vectors", default=None)
    ap.add_argument("--layer", type=int, default=18, help="monitored layer when no vectors file is given")
    ap.add_argument("--layers", default=None, help="comma-separated monitored layers (default: the vectors' default)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from emolib.chat import encode_chat
    from emolib.models import find_layers, load_model
    from emolib.monitor.calibration import Calibration
    from emolib.monitor.scenarios import load_scenarios
    from emolib.monitor.scoring import Monitor

    model, tok, info = load_model(args.model)
    layer = min(args.layer, len(find_layers(model)) - 1)
    vec = _vectors(args.vectors, info.width, layer)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    rules = [r for r in ["desperate > p99 for 3", "calm < p1 for 3", "afraid > p99 for 3", "angry > p99 for 3",
                         "nervous > p99 for 3"]]
    mon = Monitor(vec, layers=layers, window=args.window)
    mon.rules = mon.usable_rules(rules)
    E = len(mon.emotions)
    # thresholds nobody reaches: the rules are checked at every token but never stop anything
    mon.calibration = Calibration(emotions=mon.emotions, percentiles=[1.0, 99.0],
                                  values=torch.tensor([[-1e9] * E, [1e9] * E]), mean=torch.zeros(E), std=torch.ones(E),
                                  layers=list(mon.layers), window=mon.window, n_tokens=0, n_dialogues=0)
    scen = {s.id: s for s in load_scenarios()}["distressed_user_live"]
    chat = encode_chat(tok, scen.messages)
    ids = torch.tensor([chat.ids])
    n = args.new_tokens
    common = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "temperature": None, "top_p": None,
              "top_k": None, "pad_token_id": tok.pad_token_id}
    seen = []

    def plain():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **common)
        assert out.shape[1] == ids.shape[1] + n

    hook_frac: list[float] = []
    last_frac: list[float] = []

    def monitored(score_last: bool):
        tr = mon.generate(model, tok, chat, max_new_tokens=n, min_new_tokens=n, score_last=score_last,
                          on_token=lambda e: seen.append(e.index))
        assert len(tr) == len(chat.ids) + n - (0 if score_last else 1)
        hook_frac.append(tr.timing["hook_seconds"] / tr.timing["generate_seconds"])
        if score_last:
            last_frac.append(tr.timing["last_step_seconds"] / tr.timing["generate_seconds"])

    plain()
    monitored(True)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "monitored": [], "monitored_no_last": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("monitored", lambda: monitored(True)),
                         ("monitored_no_last", lambda: monitored(False))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {info.name}, monitored layers {mon.layers}, {E} emotions, window {mon.window}, "
          f"{len(mon.rules)} rules; prompt {len(chat.ids)} tokens + {n} new, batch 1, {args.threads} threads, "
          f"{args.repeats} alternating repeats (2-core CPU, shared)")
    for k, v in times.items():
        print(f"  {k:18s} median {med[k]:.3f} s  ({n / med[k]:.1f} tok/s)  runs: {', '.join(f'{x:.2f}' for x in v)}")
    print(f"ratio monitored / plain               = {med['monitored'] / med['plain']:.3f}")
    print(f"ratio monitored (no last step) / plain = {med['monitored_no_last'] / med['plain']:.3f}")
    pairs = [m / p for m, p in zip(times["monitored_no_last"], times["plain"])]
    print(f"per-repeat ratios (no last step): {', '.join(f'{r:.3f}' for r in pairs)}")
    # wall-clock ratios drown in load noise on a shared machine; the time spent inside the
    # monitor's own hook code is measured directly and is the overhead that matters
    print(f"time inside monitor hooks / generate time: median {statistics.median(hook_frac[1:]):.4f} "
          f"(max {max(hook_frac[1:]):.4f})")
    print(f"extra last-token step / generate time:   median {statistics.median(last_frac[1:]):.4f}")
    print(f"=> overhead estimate 1 + hooks (+ last step) = {1 + statistics.median(hook_frac[1:]):.3f} "
          f"({1 + statistics.median(hook_frac[1:]) + statistics.median(last_frac[1:]):.3f} with score_last)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
