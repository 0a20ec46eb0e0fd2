#!/usr/bin/env python3
"""Writes tests/data/loader_golden.json: sampled weights of the default GGUF model as Hugging Face
transformers loads them, for tests/model/test_loader_model.cpp.

transformers dequantizes with llama.cpp's `gguf` package and undoes llama.cpp's Q/K row permutation
(LlamaTensorProcessor._reverse_permute_weights). Our loader must match it on layer 0's q_proj and
k_proj and on the token embedding; the raw, still-permuted attn_q from `gguf` alone is stored too so a
dequantization error and a permutation error can be told apart.

Needs: transformers, torch, gguf, numpy (no accelerate: the checkpoint is read through
transformers' load_gguf_checkpoint rather than from_pretrained).

Run: /work/oracle-venv/bin/python tests/oracle/make_loader_golden.py [model.gguf]
"""
import hashlib
import importlib.metadata as md
import json
import os
import re
import sys

import numpy as np
import torch
from gguf import GGUFReader, dequantize
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "loader_golden.json")
N_RANDOM = 32


def default_model():
    if os.environ.get("CHUNKWISE_MODEL"):
        return os.environ["CHUNKWISE_MODEL"]
    cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return os.path.join(cache, "chunkwise", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def samples(w, rows, rng):
    """[row, col, value] for the given rows (a random column each) plus N_RANDOM random cells."""
    out = []
    for r in rows:
        c = int(rng.integers(w.shape[1]))
        out.append([int(r), c, float(w[r, c])])
    for _ in range(N_RANDOM):
        r, c = int(rng.integers(w.shape[0])), int(rng.integers(w.shape[1]))
        out.append([r, c, float(w[r, c])])
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else default_model()
    parsed = load_gguf_checkpoint(path, return_tensors=False)
    config = LlamaConfig(**parsed["config"])
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton, torch_dtype=torch.float32)
    tensors = parsed["tensors"]

    head_dim = config.hidden_size // config.num_attention_heads
    rng = np.random.default_rng(0)
    golden = {}

    def head_rows(n_rows):
        # First rows of both halves of each head, and the last row: where a wrong permutation shows.
        rows = {0, 1, 2, n_rows - 1}
        for h in range(n_rows // head_dim):
            rows |= {h * head_dim, h * head_dim + 1, h * head_dim + head_dim // 2, h * head_dim + head_dim // 2 + 1}
        return sorted(rows)

    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.embed_tokens.weight"):
        w = tensors[name].numpy()
        rows = head_rows(w.shape[0]) if "proj" in name else [0, 1, 2, w.shape[0] - 1]
        golden[name] = {"shape": list(w.shape), "samples": samples(w, rows, rng)}

    reader = GGUFReader(path)
    raw = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    w = dequantize(raw.data, raw.tensor_type).reshape(int(raw.shape[1]), int(raw.shape[0]))
    golden["gguf:blk.0.attn_q.weight"] = {"shape": list(w.shape), "type": raw.tensor_type.name,
                                          "samples": samples(w, head_rows(w.shape[0]), rng)}

    doc = {
        "model_file": os.path.basename(path),
        "model_size": os.path.getsize(path),
        "model_sha256": sha256(path),
        "versions": {p: md.version(p) for p in ("transformers", "gguf", "torch", "numpy")},
        "note": "values as transformers loads them (Q/K un-permuted); 'gguf:' entries are raw gguf dequantization",
        "config": {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                   "intermediate_size": config.intermediate_size,
                   "num_attention_heads": config.num_attention_heads,
                   "num_key_value_heads": config.num_key_value_heads, "vocab_size": config.vocab_size,
                   "rope_theta": float(getattr(config, "rope_theta", None)
                                       or config.rope_parameters["rope_theta"]),
                   "rms_norm_eps": config.rms_norm_eps,
                   "max_position_embeddings": config.max_position_embeddings,
                   "tie_word_embeddings": bool(config.tie_word_embeddings)},
        "tensors": golden,
    }
    text = json.dumps(doc, indent=1)
    # One [row, col, value] sample (or shape) per line keeps the file short and diffable.
    text = re.sub(r"\[\s+([-\d.e+]+(?:,\s+[-\d.e+]+)*)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]",
                  text)
    with open(OUT, "w") as f:
        f.write(text + "\n")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
