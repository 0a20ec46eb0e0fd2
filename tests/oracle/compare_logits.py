#!/usr/bin/env python3
"""Compare chunkwise's logits with Hugging Face transformers on the same tokens.

    chunkwise logits --text "Hello there" --out ours.npy
    /work/oracle-venv/bin/python tests/oracle/compare_logits.py --text "Hello there" --npy ours.npy

    # or with token ids: a JSON list of ids, or a golden file with a "tokens" key
    /work/oracle-venv/bin/python tests/oracle/compare_logits.py \
        --ids-json tests/data/golden/code_review.json --npy ours.npy

--text is tokenized with the tokenizer inside the GGUF, without BOS (the model's
add_bos_token is false), exactly as tests/oracle/make_golden.py does.  The reference
model is the GGUF dequantized to float32 and run by transformers' LlamaForCausalLM with
eager attention (see make_golden.load_model).

Prints argmax agreement at every position, max |Δlogit|, max |logit|, and
PASS (exit 0) when the argmax is identical at every position and
max |Δlogit| <= 1e-3 * max |logit|, else FAIL (exit 1).  Exit 2: bad input.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden  # noqa: E402

REL_TOL = 1e-3


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        for key in ("tokens", "ids", "input_ids"):
            if key in data:
                data = data[key]
                break
        else:
            raise ValueError(f"{path}: no 'tokens' / 'ids' / 'input_ids' key")
    if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
        raise ValueError(f"{path}: expected a list of integer token ids")
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids-json", help="JSON list of token ids, or a JSON object with a 'tokens' list")
    src.add_argument("--text", help="text to tokenize with the GGUF's tokenizer (no BOS)")
    ap.add_argument("--npy", required=True, help="our logits: float32 array [tokens, vocab] (.npy)")
    ap.add_argument("--model", default=make_golden.DEFAULT_MODEL, help="GGUF model path")
    ap.add_argument("--loader", choices=["auto", "transformers", "gguf"], default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=10, help="mismatching positions to list (default 10)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model_path = os.path.abspath(os.path.expanduser(args.model))
    model_dir, model_file = os.path.split(model_path)

    ours = np.load(args.npy)
    if ours.ndim == 3 and ours.shape[0] == 1:
        ours = ours[0]
    if ours.ndim != 2:
        print(f"FAIL: {args.npy} has shape {ours.shape}, expected [tokens, vocab]")
        return 2
    if ours.dtype != np.float32:
        print(f"note: {args.npy} is {ours.dtype}, converting to float32")
        ours = ours.astype(np.float32)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    if args.ids_json:
        ids = read_ids(args.ids_json)
    else:
        ids = tok(args.text, add_special_tokens=False)["input_ids"]
    T = len(ids)
    if T == 0:
        print("FAIL: no tokens")
        return 2

    model, info = make_golden.load_model(model_path, args.loader, verbose=False)
    V = model.config.vocab_size
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].to(torch.float32).numpy()

    print(f"model:   {model_path}")
    print(f"loader:  {info['loader']}")
    print(f"tokens:  {T}  {ids[:16]}{' ...' if T > 16 else ''}")
    if ours.shape != (T, V):
        print(f"FAIL: ours has shape {tuple(ours.shape)}, transformers has ({T}, {V})"
              + ("  (a BOS added on our side?)" if ours.shape[0] == T + 1 else ""))
        return 1
    if not np.isfinite(ours).all():
        bad = np.argwhere(~np.isfinite(ours))
        print(f"FAIL: ours has {len(bad)} non-finite values, first at [pos, id] = {bad[0].tolist()}")
        return 1

    a_ours = ours.argmax(-1)
    a_ref = ref.argmax(-1)
    mism = np.nonzero(a_ours != a_ref)[0]
    diff = np.abs(ours - ref)
    max_diff = float(diff.max())
    pos, vid = np.unravel_index(int(diff.argmax()), diff.shape)
    max_abs = float(np.abs(ref).max())
    tol = REL_TOL * max_abs
    per_pos = diff.max(-1)

    print(f"argmax agreement: {T - len(mism)}/{T} positions")
    for p in mism[: args.show]:
        r = ref[p]
        top2 = np.sort(r)[-2:]
        print(f"  pos {p:5d}: ours {a_ours[p]:6d} {tok.decode([int(a_ours[p])])!r:14s} "
              f"ref {a_ref[p]:6d} {tok.decode([int(a_ref[p])])!r:14s} "
              f"ref logits {r[a_ref[p]]:.6f} vs {r[a_ours[p]]:.6f} (ref top1-top2 gap {top2[1] - top2[0]:.6f})")
    if len(mism) > args.show:
        print(f"  ... {len(mism) - args.show} more")
    print(f"max |dlogit|:     {max_diff:.6g} at position {pos}, token {vid}"
          f" (ours {ours[pos, vid]:.6f}, ref {ref[pos, vid]:.6f})")
    print(f"mean |dlogit|:    {float(diff.mean()):.6g}; max |dlogit| at position 0: {float(per_pos[0]):.6g}, "
          f"at the last position: {float(per_pos[-1]):.6g}")
    print(f"max |logit|:      {max_abs:.6g} (transformers); tolerance 1e-3*max|logit| = {tol:.6g}")
    ok = len(mism) == 0 and max_diff <= tol
    reasons = []
    if len(mism):
        reasons.append(f"argmax differs at {len(mism)} position(s)")
    if max_diff > tol:
        reasons.append(f"max |dlogit| {max_diff:.6g} > {tol:.6g}")
    print("PASS" if ok else "FAIL: " + "; ".join(reasons))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
