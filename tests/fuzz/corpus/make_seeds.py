#!/usr/bin/env python3
"""Writes the fuzzing seed corpus (tests/fuzz/corpus/{gguf,safetensors}) with the reference writers.

The GGUF seeds are written by llama.cpp's `gguf` package (GGUFWriter), with Q/K permuted exactly as
llama.cpp's convert_hf_to_gguf.py does, so the C++ unit tests also use them as an independent check
of the parser and of the un-permutation. The safetensors seeds are written by the `safetensors`
package. Weight values follow pattern() so the C++ tests can recompute them.

Run: /work/oracle-venv/bin/python tests/fuzz/corpus/make_seeds.py   (needs gguf, numpy, safetensors)
"""
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))


def pattern(tid, rows, cols):
    """Values k/16 with k in [-8, 7]: exact in F16, BF16, and in Q8_0/Q4_0/Q4_1 blocks whose range spans them."""
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    return (((tid * 31 + r * 7 + c * 3) % 16) - 8).astype(np.float32) / 16.0


def llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tensor(writer, name, w, qtype):
    if qtype == Q.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(w.astype(np.float32), qtype), raw_dtype=qtype)


def write_llama(path, *, n_layers, hidden, n_heads, n_kv, ffn, vocab, types, tied=True, alignment=None):
    head_dim = hidden // n_heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_block_count(n_layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["t 0", "t 1"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{{ messages }}")
    tid = 0

    def t(name, rows, cols, qtype, permute_heads=0):
        nonlocal tid
        tid += 1
        m = pattern(tid, rows, cols)
        if permute_heads:
            m = llama_cpp_permute(m, permute_heads)
        add_tensor(w, name, m if cols > 1 else m[:, 0], qtype)

    t("token_embd.weight", vocab, hidden, types["embd"])
    for l in range(n_layers):
        t(f"blk.{l}.attn_norm.weight", hidden, 1, Q.F32)
        t(f"blk.{l}.attn_q.weight", n_heads * head_dim, hidden, types["q"], n_heads)
        t(f"blk.{l}.attn_k.weight", n_kv * head_dim, hidden, types["k"], n_kv)
        t(f"blk.{l}.attn_v.weight", n_kv * head_dim, hidden, types["v"])
        t(f"blk.{l}.attn_output.weight", hidden, n_heads * head_dim, types["o"])
        t(f"blk.{l}.ffn_norm.weight", hidden, 1, Q.F32)
        t(f"blk.{l}.ffn_gate.weight", ffn, hidden, types["gate"])
        t(f"blk.{l}.ffn_up.weight", ffn, hidden, types["up"])
        t(f"blk.{l}.ffn_down.weight", hidden, ffn, types["down"])
    t("output_norm.weight", hidden, 1, Q.F32)
    if not tied:
        t("output.weight", vocab, hidden, types["embd"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_metadata_only(path):
    w = gguf.GGUFWriter(path, "llama")
    V = gguf.GGUFValueType
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo")
    w.add_uint64("t.u64", 1 << 60)
    w.add_int64("t.i64", -(1 << 60))
    w.add_float64("t.f64", -2.25)
    w.add_key_value("t.arr_i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("t.arr_str", ["a", "bc", ""], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("t.arr_nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors(path, hidden, n_heads, n_kv, ffn, vocab, n_layers, dtype):
    from safetensors.numpy import save_file

    head_dim = hidden // n_heads
    tensors = {}
    tid = 0

    def t(name, rows, cols):
        nonlocal tid
        tid += 1
        m = pattern(tid, rows, cols)
        tensors[name] = (m if cols > 1 else m[:, 0]).astype(dtype)

    t("model.embed_tokens.weight", vocab, hidden)
    for l in range(n_layers):
        p = f"model.layers.{l}."
        t(p + "input_layernorm.weight", hidden, 1)
        t(p + "self_attn.q_proj.weight", n_heads * head_dim, hidden)
        t(p + "self_attn.k_proj.weight", n_kv * head_dim, hidden)
        t(p + "self_attn.v_proj.weight", n_kv * head_dim, hidden)
        t(p + "self_attn.o_proj.weight", hidden, n_heads * head_dim)
        t(p + "post_attention_layernorm.weight", hidden, 1)
        t(p + "mlp.gate_proj.weight", ffn, hidden)
        t(p + "mlp.up_proj.weight", ffn, hidden)
        t(p + "mlp.down_proj.weight", hidden, ffn)
    t("model.norm.weight", hidden, 1)
    save_file(tensors, path, metadata={"format": "pt"})


def main():
    gdir = os.path.join(HERE, "gguf")
    sdir = os.path.join(HERE, "safetensors")
    os.makedirs(gdir, exist_ok=True)
    os.makedirs(sdir, exist_ok=True)
    f32 = {k: Q.F32 for k in ("embd", "q", "k", "v", "o", "gate", "up", "down")}
    write_llama(os.path.join(gdir, "tiny_llama_f32.gguf"), n_layers=2, hidden=8, n_heads=2, n_kv=1, ffn=16,
                vocab=16, types=f32)
    mixed = {"embd": Q.Q8_0, "q": Q.F32, "k": Q.F16, "v": Q.Q4_0, "o": Q.Q4_1, "gate": Q.BF16, "up": Q.Q4_0,
             "down": Q.Q8_0}
    write_llama(os.path.join(gdir, "tiny_llama_mixed.gguf"), n_layers=1, hidden=32, n_heads=4, n_kv=2, ffn=64,
                vocab=40, types=mixed, tied=False, alignment=64)
    write_metadata_only(os.path.join(gdir, "metadata_all_types.gguf"))
    # Fuzz target fuzz_safetensors maps weights with this same tiny config.
    cfg = dict(hidden=8, n_heads=2, n_kv=1, ffn=16, vocab=16, n_layers=1)
    write_safetensors(os.path.join(sdir, "tiny_f32.safetensors"), dtype=np.float32, **cfg)
    write_safetensors(os.path.join(sdir, "tiny_f16.safetensors"), dtype=np.float16, **cfg)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
              "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
              "num_hidden_layers": 1, "vocab_size": 16, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
              "bos_token_id": 1, "eos_token_id": [2, 3], "hidden_act": "silu",
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
    with open(os.path.join(sdir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    print("wrote seeds under", HERE, "with gguf", gguf.__file__, file=sys.stderr)


if __name__ == "__main__":
    main()
