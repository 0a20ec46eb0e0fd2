#!/usr/bin/env python3
"""Make the golden logits data for chunkwise's model tests with Hugging Face transformers.

The reference is the GGUF model itself, dequantized to float32 and run by
transformers' LlamaForCausalLM in float32 with eager attention on the CPU:

    /work/oracle-venv/bin/python tests/oracle/make_golden.py \
        [--model ~/.cache/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/data/golden] [--loader auto|transformers|gguf]

Loaders:
  transformers  AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32):
                transformers dequantizes with the gguf package and undoes llama.cpp's Q/K
                row permutation.  transformers 5.x refuses GGUF files unless the
                `accelerate` package is importable.
  gguf          LlamaForCausalLM(config from the GGUF) with weights dequantized here by
                gguf.quants.dequantize and the Q/K permutation undone here.
  auto          (default) transformers, falling back to gguf when it fails.
Whatever loader is used, every weight of the loaded model is compared with the
independent gguf-package dequantization; the max |difference| goes into the manifest
(it is 0.0: both paths run the same gguf dequantizer).

Writes <out>/manifest.json and, per prompt, <out>/<name>.json and <out>/<name>.logits.f32.
See tests/oracle/README.md for the format and what the C++ tests check.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch

DEFAULT_MODEL = os.path.expanduser("~/.cache/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden")
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EOS_ID = 2
TOP_K = 8
N_NEW = 64

# --------------------------------------------------------------------------------------
# Prompts.  Kinds: "text" = tokenized as is (no BOS); "chat" = messages rendered with the
# GGUF's ChatML template (apply_chat_template, add_generation_prompt=True), then tokenized
# (special tokens like <|im_start|> in the rendered text are matched as special tokens).
# --------------------------------------------------------------------------------------

SHORT_PROMPT = "What is the capital of France?"

CHAT_MESSAGES = [
    {
        "role": "user",
        "content": "I have three days in Lisbon next month. Can you suggest a simple plan "
        "with one museum, one good viewpoint and a place to try pastel de nata?",
    }
]

CODE_PROMPT = '''Can you explain what this Python function does and point out the bug?

```python
def moving_average(values, window):
    """Return the moving averages of `values` over `window` items."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window:
            result.append(total / window)
    return result

print(moving_average([1, 2, 3, 4, 5, 6], 3))
```
'''

EMAIL_PROMPT = (
    "Please write a short, friendly email to my landlord, Mrs. Dupont, telling her that "
    "the kitchen tap has been leaking since Tuesday (about 2 litres a day!) and asking "
    "whether a plumber could come before Friday 14:00. I paid the rent of €1,250 on "
    "the 1st — she can check the receipt #A-7731. Sign it \"Zoë\"."
)

LONG_DOCUMENT = """The Quiet Revolution in Municipal Water Systems

For most of the twentieth century, the water network of a mid-sized European city was managed almost entirely by experience. Engineers knew which districts lost pressure on hot August evenings, which cast-iron mains were likely to crack after a hard frost, and which pumping stations had to be started early on Monday mornings, when households ran their washing machines at the same time. That knowledge lived in notebooks, in the memory of senior staff and in the habits of night-shift operators who had learned to read the hum of a pump the way a doctor reads a pulse.

The first change came quietly in the 1980s, when utilities began to install telemetry on their largest reservoirs and treatment works. A handful of sensors reported tank levels and flow rates to a central control room, usually over leased telephone lines. The data were coarse, often sampled only every fifteen minutes, but for the first time an operator could see the whole system on a single wall of instruments. Decisions that had been made by telephone calls between stations could now be made by one person looking at a map.

During the following two decades, the number of measurement points multiplied. Pressure loggers were attached to fire hydrants, electromagnetic flow meters were fitted at the boundaries of district metered areas, and cheap cellular modems replaced the telephone lines. A typical network of four hundred thousand customers went from a few dozen monitored sites to several thousand. The new problem was no longer a lack of information but a surplus of it. Control room staff complained that alarms arrived faster than anyone could read them, and many utilities quietly raised their alarm thresholds until the screens were calm again, which defeated the purpose of the investment.

Leakage was the issue that forced a more careful approach. In many older networks, between a fifth and a third of the treated water never reached a customer. It seeped out of corroded joints, burst pipes under roads and service connections that had been laid in the 1950s with materials nobody would choose today. Finding those leaks had traditionally been the work of inspectors who walked the streets at night with listening sticks, pressing them against valves and hydrants and waiting for the faint hiss of escaping water. It was skilled, patient work, and it was slow: a good team could survey perhaps ten kilometres of main in a week.

The district metered area changed the economics of that search. By closing boundary valves so that each district of one to three thousand properties was fed through a single metered inlet, engineers could measure the minimum night flow, the volume entering the district between two and four in the morning, when legitimate consumption is at its lowest. If the night flow of a quiet residential district rose from four litres per second to nine over a fortnight, something had almost certainly burst, and the inspectors could be sent to that district rather than to the whole city. Utilities that adopted the method carefully reported reductions in leakage of thirty to forty percent within five years.

Pressure management came next. Engineers had long known that leaks grow with pressure, and that many networks were run at far higher pressures than customers needed, simply because the pumps had been sized for peak demand decades earlier. Installing pressure-reducing valves that lowered the pressure at night, when demand is low, cut leakage further and, just as importantly, reduced the number of new bursts. A pipe that is not repeatedly stressed by pressure surges lasts longer. In one widely cited case, a utility that introduced night-time pressure reduction across its network saw the annual number of main bursts fall by almost half.

The most recent stage is the one that attracts the most attention and, perhaps, the most exaggeration. Utilities now speak of digital twins: hydraulic models of the whole network that are continuously calibrated against live sensor data. In principle, such a model can predict the effect of closing a valve before anyone touches it, estimate where a burst has happened from the pattern of pressure drops, and suggest pump schedules that use cheaper night-time electricity without letting any reservoir run low. In practice, the results depend heavily on the quality of the underlying asset records. A model that believes a main is two hundred millimetres wide when it is in fact one hundred and fifty, or that a valve is open when it was closed during repairs three years ago, will produce confident and wrong answers.

For this reason, the engineers who have made these systems work tend to describe them in modest terms. The sensors and models, they say, do not replace the night-shift operator or the inspector with the listening stick; they tell them where to look first. The most successful projects invested as much in cleaning up maps and valve records, and in training staff to trust and question the new tools, as in the hardware itself. The revolution, if it deserves the name, has been one of attention: knowing which of ten thousand signals matters tonight, and having people on hand who understand why."""

LONG_QUESTION = (
    "\n\nQuestion: According to the article above, why did utilities start using district "
    "metered areas, and what does the author say limits the usefulness of digital twins? "
    "Answer in two or three sentences.\n\nAnswer:"
)

PROMPTS = [
    {"name": "short_question", "kind": "text", "text": SHORT_PROMPT},
    {"name": "chat_lisbon", "kind": "chat", "messages": CHAT_MESSAGES},
    {"name": "code_review", "kind": "text", "text": CODE_PROMPT},
    {"name": "email_request", "kind": "text", "text": EMAIL_PROMPT},
    {"name": "long_article_qa", "kind": "text", "text": LONG_DOCUMENT + LONG_QUESTION},
]

# --------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------

GGUF_TO_HF = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def reverse_llama_permute(w, n_head):
    """Undo llama.cpp convert_hf_to_gguf.py's permute() of Q/K rows (rotary halves -> pairs)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_state_dict(path, n_head, n_head_kv):
    """Independent dequantization: gguf.quants.dequantize + reverse Q/K permutation."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    sd = {}
    types = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            _, layer, kind, suffix = name.split(".")
            if kind == "attn_q":
                w = reverse_llama_permute(w, n_head)
            elif kind == "attn_k":
                w = reverse_llama_permute(w, n_head_kv)
            hf = f"model.layers.{layer}.{GGUF_TO_HF[kind]}.{suffix}"
        else:
            raise RuntimeError(f"unexpected tensor {name}")
        sd[hf] = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))
    return sd, types


def load_model_transformers(model_dir, model_file):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=model_file, dtype=torch.float32, attn_implementation="eager"
    )


def load_model_gguf(model_dir, model_file, sd):
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(model_dir, gguf_file=model_file)
    config._attn_implementation = "eager"
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    if config.tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model


def compare_weights(model, sd):
    msd = model.state_dict()
    worst = 0.0
    for k, v in sd.items():
        if k not in msd:
            if k == "lm_head.weight":
                continue
            raise RuntimeError(f"model lacks {k}")
        m = msd[k].detach().to(torch.float32)
        if m.shape != v.shape:
            raise RuntimeError(f"{k}: shape {tuple(m.shape)} vs {tuple(v.shape)}")
        worst = max(worst, float((m - v).abs().max()))
    if model.config.tie_word_embeddings:
        if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            worst = max(worst, float((model.lm_head.weight - sd["model.embed_tokens.weight"]).abs().max()))
    return worst


def load_model(model_path, loader="auto", verbose=True):
    """Load the GGUF as a float32, eager-attention LlamaForCausalLM in eval mode.

    Returns (model, info); info names the loader used, any failure of the transformers
    loader, and the max |difference| between the model's weights and the independent
    gguf.quants.dequantize + reverse-permutation weights.
    """
    from transformers import AutoConfig

    model_dir, model_file = os.path.split(os.path.abspath(os.path.expanduser(model_path)))
    cfg = AutoConfig.from_pretrained(model_dir, gguf_file=model_file)
    t0 = time.time()
    ref_sd, tensor_types = gguf_state_dict(
        os.path.join(model_dir, model_file), cfg.num_attention_heads, cfg.num_key_value_heads
    )
    t_deq = time.time() - t0

    model = None
    loader_used = None
    notes = []
    t0 = time.time()
    if loader in ("auto", "transformers"):
        try:
            model = load_model_transformers(model_dir, model_file)
            loader_used = "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...)"
        except Exception as e:  # noqa: BLE001
            msg = f"transformers from_pretrained(gguf_file=...) failed: {type(e).__name__}: {e}"
            print(msg + " -- falling back to the gguf-package loader" if loader == "auto" else msg, file=sys.stderr)
            notes.append(msg)
            if loader == "transformers":
                raise
    if model is None:
        model = load_model_gguf(model_dir, model_file, ref_sd)
        loader_used = "LlamaForCausalLM + gguf.quants.dequantize + reverse Q/K permutation (make_golden.py)"
    t_load = time.time() - t0
    model.eval()
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.config._attn_implementation = "eager"
    weight_diff = compare_weights(model, ref_sd)
    del ref_sd
    if verbose:
        print(f"loader: {loader_used} ({t_load:.1f}s); max|w - gguf.quants.dequantize w| = {weight_diff}")
    if weight_diff != 0.0:
        print("WARNING: loaded weights differ from the gguf-package dequantization", file=sys.stderr)
    for prm in model.parameters():
        if prm.dtype != torch.float32:
            raise RuntimeError(f"parameter dtype {prm.dtype}, expected float32")
    info = {
        "loader": loader_used,
        "notes": notes,
        "weight_diff": weight_diff,
        "tensor_types": tensor_types,
        "dequantize_seconds": t_deq,
        "load_seconds": t_load,
    }
    return model, info


# --------------------------------------------------------------------------------------


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f9(x):
    """float32 -> JSON number with 9 significant digits (round-trips a float32 exactly)."""
    return float(f"{float(x):.9g}")


def topk_rows(logits, k):
    """Per row: k (id, logit) pairs, logit descending, ties by lower id."""
    out = []
    for row in logits:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([[int(i), f9(row[i])] for i in idx])
    return out


def top2_gaps(logits):
    part = -np.partition(-logits, 1, axis=-1)[:, :2]
    return part[:, 0] - part[:, 1]


def tokenize_prompt(tok, p):
    if p["kind"] == "chat":
        text = tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        enc = tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True)
        if hasattr(enc, "keys"):
            enc = enc["input_ids"]
        if enc and isinstance(enc[0], list):
            enc = enc[0]
        if list(enc) != list(ids):
            raise RuntimeError(f"{p['name']}: apply_chat_template(tokenize=True) differs from tokenizing its text")
    else:
        text = p["text"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
    # The GGUF says add_bos_token=false: the default call must give the same ids (no BOS).
    if tok(text)["input_ids"] != ids:
        raise RuntimeError(f"{p['name']}: tokenizer adds special tokens by default")
    if ids and ids[0] == 1:
        print(f"note: {p['name']} starts with id 1 (<|im_start|>) from the chat template, not an added BOS")
    return text, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--loader", choices=["auto", "transformers", "gguf"], default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    import tokenizers
    import transformers
    from importlib.metadata import version as pkg_version
    from transformers import AutoTokenizer

    model_path = os.path.abspath(os.path.expanduser(args.model))
    model_dir, model_file = os.path.split(model_path)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)

    sha = sha256_file(model_path)
    if sha != EXPECTED_SHA256:
        print(f"WARNING: model sha256 {sha} != expected {EXPECTED_SHA256}", file=sys.stderr)

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    t_tok = time.time() - t0

    model, info = load_model(model_path, args.loader)
    cfg = model.config
    tensor_types = info["tensor_types"]
    loader_used, loader_notes, weight_diff = info["loader"], info["notes"], info["weight_diff"]
    t_deq, t_load = info["dequantize_seconds"], info["load_seconds"]

    # Greedy settings, passed as generate() kwargs: a GenerationConfig with eos_token_id=None gets the
    # model's eos (2) filled back in by transformers 5.x, explicit kwargs are honoured.
    gen_kwargs = dict(
        do_sample=False,
        max_new_tokens=N_NEW,
        eos_token_id=None,  # no stopping and no EOS suppression: plain argmax for all 64 steps
        pad_token_id=EOS_ID,
        use_cache=True,
    )

    manifest_prompts = []
    summary = []
    for p in PROMPTS:
        name = p["name"]
        text, ids = tokenize_prompt(tok, p)
        T = len(ids)
        x = torch.tensor([ids], dtype=torch.long)

        t0 = time.time()
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0].to(torch.float32).numpy()
        t_fwd = time.time() - t0
        assert logits.shape == (T, cfg.vocab_size), logits.shape
        assert np.isfinite(logits).all()

        argmax = logits.argmax(-1).astype(int).tolist()
        top8 = topk_rows(logits, TOP_K)
        max_abs = float(np.abs(logits).max())
        gaps = top2_gaps(logits)

        positions = sorted(set([0, T // 3, (2 * T) // 3, T - 1]))
        rows = np.ascontiguousarray(logits[positions], dtype="<f4")
        f32_name = f"{name}.logits.f32"
        rows.tofile(os.path.join(out_dir, f32_name))

        t0 = time.time()
        with torch.no_grad():
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **gen_kwargs)
        t_gen = time.time() - t0
        greedy = gen[0, T:].tolist()
        if len(greedy) != N_NEW:
            raise RuntimeError(f"{name}: generate produced {len(greedy)} tokens, expected {N_NEW}")
        first_eos = greedy.index(EOS_ID) if EOS_ID in greedy else None

        # Sanity 1: the prompt's last-position argmax is the first generated token.
        if argmax[-1] != greedy[0]:
            raise RuntimeError(f"{name}: argmax at last position {argmax[-1]} != greedy64[0] {greedy[0]}")
        # Sanity 2: a full no-cache forward over prompt+generation reproduces every greedy step.
        with torch.no_grad():
            full = model(input_ids=gen, use_cache=False).logits[0].to(torch.float32).numpy()
        steps = full[T - 1 : T - 1 + N_NEW]
        nocache_argmax = steps.argmax(-1).tolist()
        mismatch = [i for i in range(N_NEW) if nocache_argmax[i] != greedy[i]]
        prompt_rows_diff = float(np.abs(full[:T] - logits).max())
        greedy_gaps = top2_gaps(steps)
        tie_tol = 2e-3 * max_abs
        near_ties = [[int(i), f9(gaps[i])] for i in np.nonzero(gaps < tie_tol)[0]]
        greedy_near = [[int(i), f9(greedy_gaps[i])] for i in np.nonzero(greedy_gaps < tie_tol)[0]]
        if mismatch:
            print(f"WARNING: {name}: cached greedy differs from no-cache argmax at steps {mismatch}", file=sys.stderr)

        rec = {
            "name": name,
            "kind": p["kind"],
            "text": text,
            "tokens": ids,
            "argmax": argmax,
            "top8": top8,
            "max_abs_logit": f9(max_abs),
            "full_rows": {"positions": positions, "file": f32_name, "vocab": int(cfg.vocab_size)},
            "greedy64": greedy,
            "first_eos_in_greedy": first_eos,
            "greedy64_text": tok.decode(greedy),
            # Diagnostics: smallest top1-top2 logit gap over the prompt positions / greedy steps
            # (how close an argmax comparison comes to a tie).
            "min_top2_gap": f9(gaps.min()),
            "min_top2_gap_position": int(gaps.argmin()),
            "greedy_min_top2_gap": f9(greedy_gaps.min()),
            "greedy_min_top2_gap_step": int(greedy_gaps.argmin()),
            # [position, gap] where top1-top2 < 2e-3*max_abs_logit: there an engine within the logit
            # tolerance (1e-3*max|logit| each way) could legitimately pick the other token.
            "argmax_near_ties": near_ties,
            "greedy_near_ties": greedy_near,
        }
        if p["kind"] == "chat":
            rec["messages"] = p["messages"]
        json_name = f"{name}.json"
        with open(os.path.join(out_dir, json_name), "w", encoding="utf-8") as f:
            json.dump(rec, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")

        entry = {
            "name": name,
            "kind": p["kind"],
            "json": json_name,
            "logits_f32": f32_name,
            "n_tokens": T,
            "full_row_positions": positions,
            "first_eos_in_greedy": first_eos,
            "forward_seconds": round(t_fwd, 3),
            "generate_seconds": round(t_gen, 3),
            "nocache_vs_cache_greedy_mismatches": mismatch,
            "nocache_prompt_logits_max_abs_diff": prompt_rows_diff,
            "argmax_near_ties": len(near_ties),
            "greedy_near_ties": len(greedy_near),
        }
        manifest_prompts.append(entry)
        summary.append(
            f"{name:18s} T={T:5d} fwd={t_fwd:6.2f}s gen64={t_gen:6.2f}s max|logit|={max_abs:8.4f} "
            f"min_gap={gaps.min():.5f} greedy_min_gap={greedy_gaps.min():.5f} first_eos={first_eos} "
            f"near_ties={len(near_ties)} greedy_near_ties={len(greedy_near)} nocache_mismatch={mismatch}"
        )
        print(summary[-1], flush=True)
        del logits, full

    manifest = {
        "description": "Golden logits for chunkwise model tests, made by tests/oracle/make_golden.py "
        "(Hugging Face transformers, float32, eager attention, CPU).",
        "model": {
            "file": model_file,
            "sha256": sha,
            "architecture": "llama",
            "vocab_size": int(cfg.vocab_size),
            "tensor_types": tensor_types,
        },
        "loader": loader_used,
        "loader_notes": loader_notes,
        "loaded_vs_gguf_dequantize_max_abs_weight_diff": weight_diff,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": pkg_version("gguf"),
            "numpy": np.__version__,
        },
        "settings": {
            "dtype": "float32",
            "attn_implementation": "eager",
            "torch_threads": args.threads,
            "bos_added": False,
            "top_k": TOP_K,
            "greedy_new_tokens": N_NEW,
            "greedy": "model.generate(do_sample=False, max_new_tokens=64, eos_token_id=None, use_cache=True)",
            "eos_token_id": EOS_ID,
            "logits_f32": "little-endian float32, rows (one per listed position) of vocab floats, concatenated",
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing_seconds": {"tokenizer_load": round(t_tok, 2), "dequantize": round(t_deq, 2), "model_load": round(t_load, 2)},
        "prompts": manifest_prompts,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.write("\n")

    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
