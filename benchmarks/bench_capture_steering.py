"""Benchmark: what do capture and steering cost on the default model? (Not a test.)

Prints, on SmolLM2-135M-Instruct:
1. pooled capture of all 30 blocks vs a plain forward of the same texts (same batches, no hooks),
   both without the LM head, and vs a full forward with the LM head;
2. steered vs plain greedy generation (same prompts, same number of new tokens).

Usage: .venv/bin/python benchmarks/bench_capture_steering.py [--texts 64] [--batch 16] [--new 48]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emolib.capture import pooled_means
from emolib.models import base_model, load_model
from emolib.steering import steer

SENTENCES = [
    "The morning ferry left the harbour twenty minutes late because of a fault in the ticket machine.",
    "She copied the figures from the spreadsheet into the report and checked each column twice.",
    "Rain had soaked the cardboard boxes stacked by the back door of the bakery.",
    "He counted the steps up to the lighthouse gallery and wrote the number in a notebook.",
    "A delivery van blocked the narrow street while the driver searched for the right house.",
]


def make_texts(n: int, sentences_per_text: int = 7) -> list[str]:
    out = []
    for i in range(n):
        parts = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(sentences_per_text + i % 3)]
        out.append(f"Note {i}. " + " ".join(parts))
    return out


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_forward(model, tok, texts, batch, head: bool) -> None:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    core = model if head else base_model(model)
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            enc = tok([texts[i] for i in order[s:s + batch]], return_tensors="pt", padding=True)
            core(**enc, use_cache=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, tok, info = load_model("smollm2-135m-instruct")
    texts = make_texts(args.texts)
    n_tok = sum(len(tok(t)["input_ids"]) for t in texts)
    print(f"model {info.name}, {info.n_layers} blocks, width {info.width}; torch threads {torch.get_num_threads()}")
    print(f"{len(texts)} texts, {n_tok} tokens, batch {args.batch}")

    t_base = timeit(lambda: plain_forward(model, tok, texts, args.batch, head=False), args.repeats)
    t_full = timeit(lambda: plain_forward(model, tok, texts, args.batch, head=True), args.repeats)
    t_cap = timeit(lambda: pooled_means(model, tok, texts, layers=None, start=50, batch_size=args.batch), args.repeats)
    print(f"forward without LM head : {t_base:6.2f} s  ({n_tok / t_base:6.0f} tok/s)")
    print(f"forward with LM head    : {t_full:6.2f} s  ({n_tok / t_full:6.0f} tok/s)")
    print(f"pooled capture, 30 blocks: {t_cap:6.2f} s  ({n_tok / t_cap:6.0f} tok/s)")
    print(f"ratio capture / forward without head: {t_cap / t_base:.3f}  (goal <= 1.10)")
    print(f"ratio capture / forward with head   : {t_cap / t_full:.3f}")

    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Write a sentence about item {i}."}],
                                       tokenize=False, add_generation_prompt=True) for i in range(8)]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    vec = torch.randn(info.width, generator=torch.Generator().manual_seed(0))

    def gen():
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                           pad_token_id=tok.pad_token_id)

    def gen_steered():
        with steer(model, vec, layers=[18], strength=0.1, norms=10.0, scope="all"):
            gen()

    t_gen = timeit(gen, args.repeats)
    t_steer = timeit(gen_steered, args.repeats)
    new_tokens = len(prompts) * args.new
    print(f"plain generation  : {t_gen:6.2f} s ({new_tokens / t_gen:6.1f} new tok/s at batch {len(prompts)})")
    print(f"steered generation: {t_steer:6.2f} s ({new_tokens / t_steer:6.1f} new tok/s)")
    print(f"ratio steered / plain generation: {t_steer / t_gen:.3f}  (goal <= 1.03)")


if __name__ == "__main__":
    main()
