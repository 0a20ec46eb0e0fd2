#!/usr/bin/env python3
"""Peer measurements for the GPU benchmark: what PyTorch and Hugging Face transformers reach on the
same cases as chunkwise's kernels and CLI (bench/gpu/README.md names the cases).

Runs on the GPU machine (torch 2.11, transformers 5.17, no network). Prints one line per
measurement:

    PEER_JSON {"case": ..., "shape": ..., "impl": ..., "ms": ..., "tflops"|"tbps"|"tok_s": ..., "note": ...}

and one `PEER_ENV {...}` line with versions and the card. A case that fails prints its PEER_JSON
with an "error" field and the script goes on. Times are medians of CUDA-event timings after a
warm-up; random inputs (never zeros), fixed seeds.

    python3 bench/gpu/peers.py [--cases copy,gemm,sdpa_prefill,flex,sdpa_decode,e2e_135m,e2e_8b]
                               [--e2e-requests N | --full] [--time-budget S]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback

ALL_CASES = ["copy", "gemm", "sdpa_prefill", "flex", "sdpa_decode", "e2e_135m", "e2e_8b"]
KERNEL_CASES = ["copy", "gemm", "sdpa_prefill", "flex", "sdpa_decode"]
# The report's case names (bench/gpu/README.md) that each --cases entry measures.
CASE_NAMES = {
    "copy": ["copy_2GiB"],
    "gemm": ["gemm_bf16_8192"],
    "sdpa_prefill": ["dense_prefill_L4096", "dense_prefill_L16384", "dense_prefill_L65536"],
    "flex": [f"sparse_prefill_L32768_d{p}" for p in (100, 30, 10, 3)],
    "sdpa_decode": ["decode_64x4096", "decode_8x32768"],
    "e2e_135m": ["e2e_smollm2-135m"],
    "e2e_8b": ["e2e_llama3-8b"],
}

# The model shapes of `chunkwise make-model` (tools/cmd_make_model.cpp).
SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                      tie_word_embeddings=False,
                      rope={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope={"rope_type": "default", "rope_theta": 100000.0}),
}

torch = None  # imported in main(), so that --help works without torch
F = None


def emit(case, shape, impl, note="", **fields):
    row = {"case": case, "shape": shape, "impl": impl}
    row.update({k: v for k, v in fields.items() if v is not None})
    row["note"] = note
    print("PEER_JSON " + json.dumps(row), flush=True)


def emit_error(case, shape, impl, err):
    msg = f"{type(err).__name__}: {err}".replace("\n", " ")[:400]
    print(f"[peers] {case} {impl} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    emit(case, shape, impl, note="failed", error=msg)


def free_memory():
    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def median_ms(fn, warmup=3, iters=20):
    """Median of `iters` CUDA-event timings of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    n = len(times)
    return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])


def randn(*shape, dtype=None, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", dtype=dtype or torch.bfloat16, generator=g)


# ---- kernels ---------------------------------------------------------------------------------------------

def case_copy(args):
    shape = "2GiB"
    try:
        n = (2 << 30) // 2  # bf16 elements in 2 GiB
        src = randn(n, seed=1)
        dst = torch.empty_like(src)
        ms = median_ms(lambda: dst.copy_(src), warmup=3, iters=20)
        moved = 2 * src.numel() * src.element_size()  # read + write
        emit("copy_2GiB", shape, "torch_copy", ms=ms, tbps=moved / ms / 1e9,
             note="device-to-device copy, bytes read + written, median of 20")
        del src, dst
    except Exception as e:  # noqa: BLE001
        emit_error("copy_2GiB", shape, "torch_copy", e)
    free_memory()


def case_gemm(args):
    shape = "8192x8192x8192"
    try:
        n = 8192
        a, b = randn(n, n, seed=2), randn(n, n, seed=3)
        c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        ms = median_ms(lambda: torch.matmul(a, b, out=c), warmup=5, iters=20)
        emit("gemm_bf16_8192", shape, "cublas", ms=ms, tflops=2 * n ** 3 / ms / 1e9,
             note="torch.matmul bf16, random data, median of 20")
        del a, b, c
    except Exception as e:  # noqa: BLE001
        emit_error("gemm_bf16_8192", shape, "cublas", e)
    free_memory()


SDPA_HEADS = (32, 8, 128)  # q heads, kv heads, head dim of the dense prefill cases


def sdpa_prefill_ms(L, iters):
    """Median time of causal GQA SDPA over L tokens (SDPA_HEADS, bf16, batch 1)."""
    hq, hkv, d = SDPA_HEADS
    q = randn(1, hq, L, d, seed=10)
    k = randn(1, hkv, L, d, seed=11)
    v = randn(1, hkv, L, d, seed=12)
    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    return median_ms(fn, warmup=3, iters=iters)


def dense_prefill_flops(L):
    hq, _, d = SDPA_HEADS
    return 2.0 * hq * L * L * d  # causal: half of 4·H·L²·d


def case_sdpa_prefill(args):
    hq, hkv, d = SDPA_HEADS
    for L in (4096, 16384, 65536):
        case, shape = f"dense_prefill_L{L}", f"b1 h{hq}/{hkv} d{d} L{L} causal"
        try:
            iters = 20 if L <= 16384 else 8
            ms = sdpa_prefill_ms(L, iters)
            emit(case, shape, "sdpa", ms=ms, tflops=dense_prefill_flops(L) / ms / 1e9,
                 note=f"torch SDPA default backend, enable_gqa, bf16; FLOPs 2*H*L^2*d; median of {iters}")
        except Exception as e:  # noqa: BLE001
            emit_error(case, shape, "sdpa", e)
        free_memory()


_KEEP = None  # tile table read by the one mask_mod, so that flex_attention compiles once


def _tile_mask_mod(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & _KEEP[q_idx // 128, kv_idx // 128]


def sparse_tiles(nt, percent, seed):
    """Tiles of a causal [nt x nt] grid: the diagonal plus random strictly-lower tiles, about
    `percent` % of the nt(nt+1)/2 causal tiles in all."""
    keep = torch.zeros(nt, nt, dtype=torch.bool)
    causal = nt * (nt + 1) // 2
    rows, cols = torch.tril_indices(nt, nt, offset=-1)
    extra = max(0, min(rows.numel(), round(percent / 100.0 * causal) - nt))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(rows.numel(), generator=g)[:extra]
    keep[rows[pick], cols[pick]] = True
    keep.fill_diagonal_(True)
    return keep


def case_flex(args):
    global _KEEP
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    L, hq, hkv, d, tile = 32768, 32, 8, 128, 128
    nt = L // tile
    causal_tiles = nt * (nt + 1) // 2
    try:
        flex = torch.compile(flex_attention, dynamic=False)
        q = randn(1, hq, L, d, seed=20)
        k = randn(1, hkv, L, d, seed=21)
        v = randn(1, hkv, L, d, seed=22)
        _KEEP = torch.ones(nt, nt, dtype=torch.bool, device="cuda")
    except Exception as e:  # noqa: BLE001
        for pct in (100, 30, 10, 3):
            emit_error(f"sparse_prefill_L{L}_d{pct}", f"b1 h{hq}/{hkv} d{d} L{L}", "flex_attention", e)
        free_memory()
        return
    for pct in (100, 30, 10, 3):
        case = f"sparse_prefill_L{L}_d{pct}"
        shape = f"b1 h{hq}/{hkv} d{d} L{L} tiles {tile}x{tile}"
        try:
            keep = sparse_tiles(nt, pct, seed=1000 + pct)
            _KEEP.copy_(keep.cuda())
            try:
                bm = create_block_mask(_tile_mask_mod, None, None, L, L, device="cuda", BLOCK_SIZE=tile,
                                       _compile=True)
            except Exception:  # noqa: BLE001  (no _compile argument, or its compiled path failed)
                bm = create_block_mask(_tile_mask_mod, None, None, L, L, device="cuda", BLOCK_SIZE=tile)
            kept = int(keep.sum())
            fn = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)  # noqa: E731
            ms = median_ms(fn, warmup=3, iters=10)
            # Work actually needed: full off-diagonal tiles plus half of each diagonal tile.
            flops = 4.0 * hq * d * tile * tile * (kept - nt + 0.5 * nt)
            emit(case, shape, "flex_attention", ms=ms, tflops=flops / ms / 1e9, kept=kept / causal_tiles,
                 note=f"torch.compile(flex_attention), create_block_mask, diagonal + random tiles (seed "
                      f"{1000 + pct}); kept {kept}/{causal_tiles} causal tiles; median of 10")
            del bm
        except Exception as e:  # noqa: BLE001
            emit_error(case, shape, "flex_attention", e)
        free_memory()
    del q, k, v
    free_memory()


def case_sdpa_decode(args):
    hq, hkv, d = 32, 8, 128
    for batch, ctx in ((64, 4096), (8, 32768)):
        case, shape = f"decode_{batch}x{ctx}", f"b{batch} ctx{ctx} h{hq}/{hkv} d{d}"
        try:
            q = randn(batch, hq, 1, d, seed=30)
            k = randn(batch, hkv, ctx, d, seed=31)
            v = randn(batch, hkv, ctx, d, seed=32)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
            ms = median_ms(fn, warmup=5, iters=50)
            kv_bytes = 2 * k.numel() * k.element_size()
            emit(case, shape, "sdpa", ms=ms, tbps=kv_bytes / ms / 1e9,
                 note="torch SDPA, one query token per sequence, contiguous KV; TB/s of KV read; median of 50")
            del q, k, v
        except Exception as e:  # noqa: BLE001
            emit_error(case, shape, "sdpa", e)
        free_memory()


# ---- transformers end to end ------------------------------------------------------------------------------

def build_model(name):
    from transformers import AutoModelForCausalLM, LlamaConfig
    s = dict(SHAPES[name])
    rope = s.pop("rope")
    common = dict(s, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    try:
        cfg = LlamaConfig(**common, rope_parameters=rope)
    except TypeError:  # transformers 4.x
        legacy = None if rope["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
        cfg = LlamaConfig(**common, rope_theta=rope["rope_theta"], rope_scaling=legacy)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    model, errors = None, []
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            for make in (lambda: AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa"),
                         lambda: AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16,
                                                                  attn_implementation="sdpa"),
                         lambda: AutoModelForCausalLM.from_config(cfg)):
                try:
                    model = make()
                    break
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")
    finally:
        torch.set_default_dtype(old)
    if model is None:
        raise RuntimeError("cannot build the model: " + " | ".join(errors))
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    # Random weights: normal(0, 0.02) like make-model, whatever the library's init did.
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model, cfg


def random_prompts(n, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def run_generate_batch(model, prompts, new_tokens):
    from transformers import GenerationConfig
    note = ""
    try:
        gc_ = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
    except Exception:  # noqa: BLE001
        gc_ = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        note = "no min_new_tokens; "
    kwargs = dict(inputs=prompts, generation_config=gc_)
    try:
        return model.generate_batch(progress_bar=False, **kwargs), note
    except TypeError:
        return model.generate_batch(**kwargs), note


def e2e(args, name, requests, static_batch):
    case = f"e2e_{name}"
    prompt_len, new_tokens = args.prompt_len, args.new_tokens
    shape = f"{requests}x{prompt_len}+{new_tokens}"
    try:
        t0 = time.perf_counter()
        model, cfg = build_model(name)
        print(f"[peers] {name}: model built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001
        emit_error(case, shape, "generate_batch", e)
        emit_error(case, shape, "generate_static", e)
        free_memory()
        return
    vocab = cfg.vocab_size
    prompts = random_prompts(requests, prompt_len, vocab, seed=7)
    reduced = "" if requests == (256 if name == "llama3-8b" else 1024) else \
        f"reduced size ({requests} requests; --full runs {256 if name == 'llama3-8b' else 1024}); "

    # Continuous batching (paged attention).
    if not args.no_generate_batch:
        try:
            # no_grad, not inference_mode: the manager runs the model on its own thread.
            with torch.no_grad():
                run_generate_batch(model, random_prompts(8, 64, vocab, seed=8), 8)  # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out, note = run_generate_batch(model, prompts, new_tokens)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            outputs = sum(len(o.generated_tokens) for o in out.values())
            total = requests * prompt_len + outputs
            # Like our stats (clock from the first request's submission), time from the first request's
            # creation to the last one's end: that leaves out the manager's set-up and CUDA-graph warm-up,
            # which the whole call (call_wall_s) includes.
            try:
                gen_wall = max(o.lifespan[1] for o in out.values()) - min(o.created_time for o in out.values())
            except Exception:  # noqa: BLE001
                gen_wall = -1.0
            timed = gen_wall if 0 < gen_wall <= wall else wall
            emit(case, shape, "generate_batch", ms=timed * 1e3, tok_s=total / timed, output_tok_s=outputs / timed,
                 output_tokens=outputs, wall_s=timed, call_wall_s=wall, call_tok_s=total / wall,
                 note=f"{reduced}{note}transformers generate_batch (continuous batching, default "
                      f"ContinuousBatchingConfig), random bf16 weights, greedy, eos None; tok/s = (prompt + "
                      f"output) / time from the first request's creation to the last one's end "
                      f"({'set-up excluded' if timed < wall else 'whole call'}; whole call {wall:.1f} s)")
            del out
        except Exception as e:  # noqa: BLE001
            emit_error(case, shape, "generate_batch", e)
        free_memory()

    # Static batches through generate().
    try:
        with torch.inference_mode():
            warm = torch.tensor(random_prompts(2, 16, vocab, seed=9), device="cuda")
            model.generate(input_ids=warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, min_new_tokens=4,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = 0
            for i in range(0, requests, static_batch):
                ids = torch.tensor(prompts[i:i + static_batch], device="cuda")
                res = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
                outputs += (res.shape[1] - ids.shape[1]) * ids.shape[0]
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        total = requests * prompt_len + outputs
        emit(case, shape, "generate_static", ms=wall * 1e3, tok_s=total / wall, output_tok_s=outputs / wall,
             output_tokens=outputs, wall_s=wall,
             note=f"{reduced}transformers generate, static batch {static_batch}, sdpa, random bf16 weights, "
                  f"min_new_tokens = max_new_tokens; tok/s = (prompt + output) / wall")
    except Exception as e:  # noqa: BLE001
        emit_error(case, shape, "generate_static", e)
    del model
    free_memory()


def case_e2e_135m(args):
    e2e(args, "smollm2-135m", args.requests_135m, static_batch=256)


def case_e2e_8b(args):
    e2e(args, "llama3-8b", args.requests_8b, static_batch=64)


CASES = {"copy": case_copy, "gemm": case_gemm, "sdpa_prefill": case_sdpa_prefill, "flex": case_flex,
         "sdpa_decode": case_sdpa_decode, "e2e_135m": case_e2e_135m, "e2e_8b": case_e2e_8b}


def main():
    global torch, F
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(ALL_CASES),
                   help=f"comma-separated subset of {','.join(ALL_CASES)}, or 'kernels' / 'e2e'")
    p.add_argument("--e2e-requests", type=int, default=None, help="requests for both e2e shapes")
    p.add_argument("--requests-8b", type=int, default=64, help="Llama-3-8B shape requests (default 64)")
    p.add_argument("--requests-135m", type=int, default=256, help="SmolLM2-135M shape requests (default 256)")
    p.add_argument("--full", action="store_true", help="the issue's full sizes: 256 (8B) and 1024 (135M) requests")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--no-generate-batch", action="store_true", help="skip generate_batch (static generate only)")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; cases that would start later are skipped")
    args = p.parse_args()
    if args.full:
        args.requests_8b, args.requests_135m = 256, 1024
    if args.e2e_requests:
        args.requests_8b = args.requests_135m = args.e2e_requests
    names = []
    for c in args.cases.split(","):
        c = c.strip()
        names += KERNEL_CASES if c == "kernels" else ["e2e_135m", "e2e_8b"] if c == "e2e" else [c] if c else []
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {ALL_CASES}")

    try:
        import torch as torch_mod
        import torch.nn.functional as functional
    except Exception as e:  # noqa: BLE001
        print("PEER_ENV " + json.dumps({"torch": f"unavailable: {e}"}), flush=True)
        for c in names:
            for case in CASE_NAMES[c]:
                emit(case, "", "none", note="failed", error=f"cannot import torch: {e}")
        return 1
    torch, F = torch_mod, functional
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        env["transformers"] = f"unavailable: {e}"
    print("PEER_ENV " + json.dumps(env), flush=True)
    if not torch.cuda.is_available():
        for c in names:
            for case in CASE_NAMES[c]:
                emit(case, "", "none", note="failed", error="no CUDA device visible to torch")
        return 1

    start = time.perf_counter()
    for c in names:
        elapsed = time.perf_counter() - start
        if args.time_budget and elapsed > args.time_budget:
            for case in CASE_NAMES[c]:
                emit(case, "", "skipped", note="skipped", error=f"time budget of {args.time_budget:.0f} s spent")
            continue
        t0 = time.perf_counter()
        try:
            CASES[c](args)
        except Exception as e:  # noqa: BLE001  (a case's own handler should have caught it)
            for case in CASE_NAMES[c]:
                emit_error(case, "", "unknown", e)
            free_memory()
        print(f"[peers] {c}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
