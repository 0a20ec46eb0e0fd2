#!/usr/bin/env python3
"""Golden data for chunkwise's tokenizer, made by the Hugging Face oracle (tokenizers + transformers).

    /work/oracle-venv/bin/python tests/oracle/make_tokenizer_golden.py [--model PATH] [--check-unicode]

Writes
  tests/data/smollm2_tokenizer.json         SmolLM2's tokenizer.json (HF format, compact)
  tests/data/smollm2_tokenizer_config.json  its tokenizer_config.json (bos/eos/pad/unk, chat template)
  tests/data/tokenizer_golden.json          strings and their ids, decodes, rendered chats

The real SmolLM2 tokenizer.json cannot be downloaded here, so the oracle tokenizer is built by
transformers from the GGUF (AutoTokenizer.from_pretrained(dir, gguf_file=...)). transformers'
GGUF converter gives every gpt2-model GGUF a plain ByteLevel pre-tokenizer, but SmolLM2's real
tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) is
    Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]
i.e. every digit is its own token. The script checks what the converter produced, records it, and
replaces the pre-tokenizer with the real one before computing any ids. (transformers 5's
GPT2Tokenizer class, which SmolLM2's tokenizer_config.json names, does the same swap when it loads a
tokenizer.json, so the config written here names the generic PreTrainedTokenizerFast instead.) Vocabulary, merges and added
tokens come from the converter unchanged (they are the GGUF's).

Besides SmolLM2's own pre-tokenizer ("smollm") the ids are also computed, on the same vocabulary,
for the other pre-tokenizers chunkwise implements, each built the way its family's tokenizer.json
spells it: "gpt2" (ByteLevel with its regex), "llama-bpe" (Llama 3's Split regex, ignore_merges)
and "qwen2" (Qwen2's Split regex).

--check-unicode compares src/model/detail/unicode_tables.hpp with the classes Oniguruma (inside
tokenizers) gives every code point, and Digits' numeric test; it prints any difference.
"""
import argparse
import copy
import hashlib
import json
import os
import pathlib
import random
import re
import sys
import tempfile

import tokenizers
import transformers
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
DEFAULT_MODEL = pathlib.Path.home() / ".cache/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

BYTE_LEVEL_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BYTE_LEVEL_PLAIN = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL_REGEX]}
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def split_pre(regex):
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL_PLAIN]}


# name -> (pre_tokenizer, ignore_merges)
VARIANTS = {
    "smollm": (SMOLLM_PRE, False),
    "gpt2": (BYTE_LEVEL_REGEX, False),
    "llama-bpe": (split_pre(LLAMA3_REGEX), True),
    "qwen2": (split_pre(QWEN2_REGEX), False),
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the strings -------------------------------------------------------------------------------

def handwritten():
    return [
        "", " ", "  ", "a", "Hello", "Hello world", "Hello, world!", " Hello", "hello ", "HELLO WORLD",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times.",
        # contractions
        "I'm", "you're", "they've", "he'd", "we'll", "it's", "don't", "can't", "won't", "DON'T", "I'M", "YOU'RE",
        "'s", "'t", "'re", "'ll", "'", "''", "'''", "rock 'n' roll", "the dogs' bones", "x'ſt", "it'S fine",
        "O'Neil's", "'hello'", "\"quoted\"", "l'été", "we'Ll", "I'D",
        # digits and numbers
        "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-42", "+7", "1e-10",
        "0x1F", "0b1010", "v1.2.3", "2024-01-15", "12:30:45", "$100.00", "50%", "abc123def", "a1b2c3",
        "123abc", "1 2 3", "1  2", " 1", "1 ", "2nd 3rd 4th", "9" * 60,
        "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679",
        "٣٤٥ ٦", "१२३ नमस्ते", "①②③", "½ ¾", "Ⅻ", "²³", "𝟘𝟙𝟚", "১২৩",
        # whitespace
        "\t", "\n", "\n\n", "\r\n", " \n ", "a\tb", "a\nb", "a\n\nb", "a \n b", "a  b", "a   b", "a    b",
        "a\t\tb", "a \tb", "a\t b", "trailing   ", "   leading", "\n\n\nx", "x\n\n\n", " \t\n\r\u000b\u000c",
        "a\u00a0b", "a\u00a0 b", "\u3000full\u3000width", "a\u2028b", "a\u0085b", "a\u1680b", "a\u2009b",
        "a\u200bb", "a\u001cb", "a\u001f\u001eb", "\u00a0\u00a0x", "  \n  \n  ",
        "line one\nline two\r\nline three\rline four",
        # punctuation and symbols
        "!!!", "???", "...", "---", "!?", "a!b", "(parens)", "[brackets]", "{braces}", "<angle>", "@user #tag",
        "a@b.com", "https://example.com/path?q=1&r=2#frag", "C:\\Windows\\System32", "~/.bashrc",
        "¡Hola! ¿Qué tal?", "«guillemets»", "„Anführungszeichen“", "—em dash–en dash", "•bullet", "…",
        "∑∫√∞≠≤≥", "→←↑↓", "┌─┐│└─┘", "©®™", "£€¥₹", "°C", "§¶", "\u0000", "a\u0000b", "\u007f", "\u0001\u0002",
        "\ue000\uf8ff", "\U000f0000",
        # bytes SmolLM2's vocabulary has no token for: HF drops them (model.unk_token is null)
        "\u0004", "a\u0006b", "x\u0013\u0014y", "\u0016", "!\u001d!", "..\u0004..", "hello\u0004world",
        # scripts
        "你好，世界！", "这是一个测试。", "日本語のテキストとカタカナ", "ひらがな", "한국어 텍스트입니다",
        "Россия и Україна", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ภาษาไทย",
        "Tiếng Việt có dấu", "ქართული", "Հայերեն", "አማርኛ", "தமிழ்", "ᚠᛇᚻ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𐐷𐑌",
        "Ꭰ Cherokee", "ꯃꯤꯇꯩ", "\U000105c0\U000105c1", "\U00011de0 \U00011de1",
        # accents and combining marks
        "café", "cafe\u0301", "naïve résumé façade", "Ångström", "Zoë", "e\u0301\u0302\u0303", "a\u0308",
        "\u0301", "n\u0303o", "Z\u0351\u0352\u0353algo", "ñÑ", "ß ẞ", "ﬁ ﬂ ﬆ",
        # emoji
        "😀", "👍", "👍🏽", "❤️", "❤", "🇺🇸", "🇯🇵🇫🇷", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏽‍💻", "1️⃣", "#️⃣", "🙂🙃",
        "emoji😀in text", "😀 😀", "✅ done", "⚠️ warning", "☃", "🀄", "🫠",
        # special tokens in text
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|><|im_end|>", "text<|endoftext|>more", "a <|im_end|> b", "<<|im_end|>>", "<|im_start",
        "<|im_start|", "< |im_start|>", "<|IM_START|>", "<repo_name>x<file_sep>y", "<filename>main.py",
        "<gh_stars>100", "<jupyter_code>print(1)<jupyter_output>1", "<empty_output>", "<issue_start>bug",
        "<|endoftext|><|endoftext|>", "<reponame><repo_name>", "<|im_end|>\n\n", "  <|im_start|>  ",
        # odd text
        "a" * 1000, "ab" * 300, "supercalifragilisticexpialidocious" * 8, "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "😀" * 40, "!" * 200, " " * 100, "\n" * 50, "x" + " " * 30 + "y", "-" * 80, "=" * 33 + ">",
        "wörd" * 50, "漢" * 100, "AbCdEfGhIjKlMnOpQrStUvWxYz", "CamelCaseIdentifierName", "snake_case_name",
        "SCREAMING_SNAKE_CASE", "kebab-case-name", "x=1;y=2", "a+b=c", "a/b\\c", "#!/bin/bash", "&&||",
    ]


CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\n\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)  # (3, 4)\n",
    "class Foo:\n\tdef __init__(self):\n\t\tself.x = 1\n",
    "#include <iostream>\n\nint main() {\n    std::cout << \"Hello, world!\" << std::endl;\n    return 0;\n}\n",
    "template <typename T>\nconstexpr T max(T a, T b) noexcept { return a > b ? a : b; }",
    "std::vector<std::pair<int, std::string>> v{{1, \"a\"}, {2, \"b\"}};",
    "for (int i = 0; i < 10; ++i) { sum += a[i] * b[i]; }",
    '{"name": "chunkwise", "version": "0.1.0", "deps": ["fmt", "eigen"], "ok": true, "n": null}',
    '{\n  "a": 1,\n  "b": [1, 2, 3],\n  "c": {"d": "e"}\n}',
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done | sort -u > out.log 2>&1\n",
    "ls -la /tmp && cd ~ || exit 1",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n}",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "# Title\n\n- item one\n- item two\n\n```python\nprint('hi')\n```\n",
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
    "if (x != nullptr && x->next) {\n\t\treturn;\n\t}\n",
    "    indented with four spaces\n        and eight\n",
    "key: value\nlist:\n  - a\n  - b\n",
]


def generated(rng):
    out = []
    # whitespace runs in every context the regexes distinguish
    runs = [" ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\n ", "\t\n", "\r\n", " \r\n ", "\u00a0", "\u3000", " \u00a0"]
    contexts = ["a{}b", "{}a", "a{}", "1{}2", "!{}?", "{}", "a{}1", "'{}s"]
    for r in runs:
        for c in contexts:
            out.append(c.format(r))
    # random mixtures of many character kinds
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list(" \t\n\r.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") +
                list("éèêëàâäôöûüçñ你好世界日本語한국어абвгдΩλπمرحباשלוםनमस्ते١٢٣") +
                ["😀", "👍🏽", "🇺🇸", "\u200d", "\u0301", "\u00a0", "\u2028", "'s", "'ll", "<|im_end|>", "<|im_start|>"])
    for _ in range(70):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(alphabet) for _ in range(n)))
    return out


def all_strings():
    rng = random.Random(1234)
    seen = set()
    result = []
    for s in handwritten() + CODE + generated(rng):
        if s not in seen:
            seen.add(s)
            result.append(s)
    return result


# ---- chat --------------------------------------------------------------------------------------

PLAIN_CHATML = ("{% for message in messages %}\n"
                "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
                "{% endfor %}\n"
                "{% if add_generation_prompt %}\n"
                "    {{- '<|im_start|>assistant\\n' }}\n"
                "{% endif %}\n")
QWEN_STYLE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
              "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# transformers refuses an empty conversation (ValueError); chunkwise throws kInvalidArgument.
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    [{"role": "user", "content": "multi\nline\n\n  content with <|im_end|> inside"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "first"}, {"role": "system", "content": "late system"},
     {"role": "user", "content": "héllo 你好 😀"}],
]


def chat_cases(oracle_dir, gguf_template):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(oracle_dir)
    assert tok.chat_template == gguf_template, "tokenizer_config chat template differs from the GGUF's"
    cases = []
    for name, template in [("smollm2", None), ("qwen-style", QWEN_STYLE), ("plain-chatml", PLAIN_CHATML)]:
        for msgs in CONVERSATIONS:
            for agp in (True, False):
                text = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=agp)
                cases.append({"template": name, "messages": msgs, "add_generation_prompt": agp, "text": text})
    return cases, {"qwen-style": QWEN_STYLE, "plain-chatml": PLAIN_CHATML}


# ---- unicode check -----------------------------------------------------------------------------

def check_unicode():
    import bisect
    from tokenizers import pre_tokenizers as P
    src = (ROOT / "src/model/detail/unicode_tables.hpp").read_text()
    main_part, extra_part = src.split("kExtraNumeric")
    ranges = [(int(a, 16), int(b, 16), int(c)) for a, b, c in
              re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+), (\d)\}", main_part)]
    extra = [(int(a, 16), int(b, 16)) for a, b, _ in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+), (\d)\}", extra_part)]
    los = [r[0] for r in ranges]

    def table(cp):
        i = bisect.bisect_right(los, cp) - 1
        return ranges[i][2] if i >= 0 and ranges[i][0] <= cp <= ranges[i][1] else 0

    bl = P.ByteLevel(add_prefix_space=False, use_regex=True)
    dg = P.Digits(individual_digits=True)
    bad, bad_digits = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        # One piece with a letter/digit/'!' before it tells the regex class apart.
        if len(bl.pre_tokenize_str("x" + c)) == 1:
            k = 1
        elif len(bl.pre_tokenize_str("1" + c)) == 1:
            k = 2
        elif len(bl.pre_tokenize_str("!" + c)) == 1:
            k = 0
        else:
            k = 3
        t = table(cp)
        if k != t:
            bad.append(f"U+{cp:04X} oniguruma {k} table {t}")
        numeric = len(dg.pre_tokenize_str("a" + c + "a")) == 3
        ours = t == 2 or any(lo <= cp <= hi for lo, hi in extra)
        if numeric != ours:
            bad_digits.append(f"U+{cp:04X} digits {numeric}")
    print(f"regex classes: {len(bad)} differences", *bad[:50], sep="\n  ")
    print(f"Digits numeric: {len(bad_digits)} differences", *bad_digits[:50], sep="\n  ")
    return not bad and not bad_digits


# ---- main --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("CHUNKWISE_MODEL", str(DEFAULT_MODEL)))
    ap.add_argument("--check-unicode", action="store_true")
    args = ap.parse_args()
    if args.check_unicode:
        sys.exit(0 if check_unicode() else 1)

    model = pathlib.Path(args.model)
    digest = sha256(model)
    if digest != MODEL_SHA256:
        print(f"warning: model sha256 {digest} is not the expected {MODEL_SHA256}", file=sys.stderr)

    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    converted = json.loads(hf.backend_tokenizer.to_str())
    converter_pre = converted["pre_tokenizer"]
    converter_matches = converter_pre == SMOLLM_PRE
    print(f"transformers' GGUF pre_tokenizer: {json.dumps(converter_pre)}; matches SmolLM2's: {converter_matches}",
          file=sys.stderr)
    fixed = copy.deepcopy(converted)
    fixed["pre_tokenizer"] = SMOLLM_PRE
    # The real file's post-processor is a no-op ByteLevel (trim_offsets only affects offsets).
    fixed["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    gguf_template = hf.chat_template

    DATA.mkdir(parents=True, exist_ok=True)
    oracle = Tokenizer.from_str(json.dumps(fixed))
    (DATA / "smollm2_tokenizer.json").write_text(oracle.to_str())
    config = {
        "add_bos_token": False, "add_prefix_space": False,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        # SmolLM2's own config says GPT2Tokenizer, but transformers 5's GPT2Tokenizer class swaps the
        # pre-tokenizer for a plain ByteLevel (dropping Digits); the generic class keeps tokenizer.json.
        "unk_token": "<|endoftext|>", "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": gguf_template,
    }
    (DATA / "smollm2_tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    variants = {}
    for name, (pre, ignore_merges) in VARIANTS.items():
        d = copy.deepcopy(fixed)
        d["pre_tokenizer"] = pre
        d["model"]["ignore_merges"] = ignore_merges
        variants[name] = Tokenizer.from_str(json.dumps(d))

    strings = all_strings()
    cases = []
    for s in strings:
        ids = {name: t.encode(s).ids for name, t in variants.items()}
        # False where HF cannot give the text back (bytes it dropped).
        case = {"text": s, "ids": ids, "roundtrip": oracle.decode(ids["smollm"], skip_special_tokens=False) == s}
        if any(tok in s for tok in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>")):
            oracle.encode_special_tokens = True  # HF's split_special_tokens: specials stay text
            case["ids_no_special"] = oracle.encode(s).ids
            oracle.encode_special_tokens = False
        cases.append(case)

    # Cross-check: transformers loading the saved files agrees with tokenizers on every string.
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "tokenizer.json").write_text((DATA / "smollm2_tokenizer.json").read_text())
        (pathlib.Path(tmp) / "tokenizer_config.json").write_text((DATA / "smollm2_tokenizer_config.json").read_text())
        tf = AutoTokenizer.from_pretrained(tmp)
        for c in cases:
            got = tf(c["text"])["input_ids"]
            assert got == c["ids"]["smollm"], (c["text"], got, c["ids"]["smollm"])
        chats, templates = chat_cases(tmp, gguf_template)
    for c in chats:
        c["ids"] = oracle.encode(c["text"]).ids
        c["decoded_skip_special"] = oracle.decode(c["ids"], skip_special_tokens=True)

    golden = {
        "about": "made by tests/oracle/make_tokenizer_golden.py; do not edit",
        "model": model.name,
        "model_sha256": digest,
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": transformers.__version__,
        "python_version": sys.version.split()[0],
        "oracle_pre_tokenizer": SMOLLM_PRE,
        "transformers_gguf_pre_tokenizer": converter_pre,
        "transformers_gguf_pre_tokenizer_matches_real": converter_matches,
        "variants": {name: {"pre_tokenizer": pre, "ignore_merges": im} for name, (pre, im) in VARIANTS.items()},
        "chat_templates": templates,
        "cases": cases,
        "chats": chats,
    }
    # One case per line keeps diffs readable.
    lines = ["{"]
    items = list(golden.items())
    for i, (k, v) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        if k in ("cases", "chats"):
            body = ",\n".join("    " + json.dumps(x, ensure_ascii=True) for x in v)
            lines.append(f"  {json.dumps(k)}: [\n{body}\n  ]{sep}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)}{sep}")
    lines.append("}")
    (DATA / "tokenizer_golden.json").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(cases)} strings x {len(variants)} pre-tokenizers, {len(chats)} chats", file=sys.stderr)


if __name__ == "__main__":
    main()
