"""The peer for bench/results/cpu.md: Hugging Face transformers (PyTorch, fp32, CPU) on the same
GGUF, timed like bench_model: prefill of 128/512/1024 tokens and one decode step for batches of
1/16/64 sequences holding 512 tokens of context.

  python bench/peer_transformers_cpu.py [--model PATH] [--threads 2]
Needs torch, transformers, gguf (and accelerate for from_pretrained(gguf_file=...)).
"""
import argparse
import os
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=os.path.expanduser("~/.cache/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model),
                                             torch_dtype=torch.float32).eval()
ids = torch.randint(100, 40000, (1, 1024), generator=torch.Generator().manual_seed(0))


def best(fn):
    fn()  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


print(f"torch {torch.__version__}, threads {args.threads}, attention {model.config._attn_implementation}")
with torch.inference_mode():
    for n in (128, 512, 1024):
        t = best(lambda: model(ids[:, :n], logits_to_keep=1))
        print(f"prefill {n:5d} tokens: {t * 1e3:8.1f} ms  {n / t:8.1f} tokens/s")
    for batch in (1, 16, 64):
        ctx = ids[:, :512].expand(batch, 512).contiguous()
        out = model(ctx, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = ids[:, 512:513].expand(batch, 1).contiguous()

        def step():
            c = DynamicCache()
            for layer in range(len(cache.layers)):
                c.update(cache.layers[layer].keys, cache.layers[layer].values, layer)
            model(nxt, past_key_values=c, use_cache=True, logits_to_keep=1)

        t = best(step)
        print(f"decode batch {batch:3d} ctx 512: {t * 1e3:8.1f} ms/step  {batch / t:8.1f} tokens/s")
