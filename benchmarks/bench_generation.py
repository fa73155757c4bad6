"""Benchmark: batched vs one-at-a-time generation, and generation vs plain forward throughput.

    .venv/bin/python benchmarks/bench_generation.py [--batch 64] [--tokens 48] [--single 8] [--threads 2] [--dtype float32] [--hf]

Same story prompts, same number of new tokens per prompt (end tokens ignored), sampled with the
default settings. "one at a time" runs the first ``--single`` prompts of the batch alone (each at
batch size 1) and is compared per token; ``--single`` equal to ``--batch`` runs them all. The plain
forward pass reads the same prompts through the decoder blocks only (no LM head): the ceiling for
reading stories in 02; it is also (nearly) the prompt-processing cost inside generation, so the
decode-only rate is printed as new tokens / (generation time - forward time). ``--hf`` also times
Hugging Face ``generate`` on the same batch, as a reference for our loop. Prints tokens/s and
ratios; a few minutes of CPU on 2 idle cores.
"""

from __future__ import annotations

import argparse
import time

import torch

from emolib.chat import prompt_text
from emolib.emotions import all_emotions
from emolib.engines.sampling import SamplingSettings, sample_batch
from emolib.models import base_model, load_model
from emolib.study.generation import story_jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--single", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto (see emolib.models)")
    ap.add_argument("--hf", action="store_true", help="also time Hugging Face generate on the same batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, info = load_model(args.model, dtype=args.dtype)
    jobs = story_jobs(list(all_emotions()), 1, 1, seed=0)[: args.batch]
    texts = [prompt_text(tok, j["prompt"]) for j in jobs]
    n_prompt = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    s = SamplingSettings(max_new_tokens=args.tokens, ignore_eos=True)
    print(f"{info.name}: {len(texts)} prompts of {min(n_prompt)}-{max(n_prompt)} tokens, {args.tokens} new tokens each, "
          f"{args.threads} thread(s)")
    sample_batch(model, tok, texts[:2], [0, 1], SamplingSettings(max_new_tokens=2))  # warm-up

    t0 = time.perf_counter()
    out = sample_batch(model, tok, texts, list(range(len(texts))), s)
    t_batch = time.perf_counter() - t0
    tok_batch = sum(o.n_new_tokens for o in out)
    r_batch = tok_batch / t_batch
    print(f"batched (batch {len(texts)}): {tok_batch} tokens in {t_batch:.1f} s = {r_batch:.1f} tok/s")

    k = min(args.single, len(texts))
    t0 = time.perf_counter()
    tok_single = 0
    for i in range(k):
        tok_single += sample_batch(model, tok, [texts[i]], [i], s)[0].n_new_tokens
    t_single = time.perf_counter() - t0
    r_single = tok_single / t_single
    print(f"one at a time ({k} prompts): {tok_single} tokens in {t_single:.1f} s = {r_single:.1f} tok/s")
    print(f"speed-up batched / one-at-a-time: {r_batch / r_single:.1f}x (goal >= 8x)")

    if args.hf:
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=True,
                           temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.1, pad_token_id=tok.pad_token_id)
        t_hf = time.perf_counter() - t0
        print(f"HF generate, same batch: {len(texts) * args.tokens / t_hf:.1f} tok/s "
              f"(ours / HF = {r_batch / (len(texts) * args.tokens / t_hf):.2f})")

    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    body = base_model(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        body(**enc)
        t_fwd = time.perf_counter() - t0
    n_real = int(enc["attention_mask"].sum())
    r_fwd = n_real / t_fwd
    print(f"plain forward, no LM head (batch {len(texts)}): {n_real} prompt tokens in {t_fwd:.1f} s = {r_fwd:.0f} tok/s")
    print(f"generation / forward throughput: {r_batch / r_fwd:.2f}")
    if t_batch > t_fwd:
        print(f"decode only (batched time minus the prompt forward): {tok_batch / (t_batch - t_fwd):.1f} tok/s")


if __name__ == "__main__":
    main()
