#!/usr/bin/env python3
"""Writes examples/workloads/assistant.jsonl, the shipped `chunkwise batch` workload.

All texts below were written by hand for this workload; nothing is generated. The output is
deterministic: running the script twice gives byte-identical files.

    python3 examples/workloads/make_workload.py                 # (re)write assistant.jsonl
    python3 examples/workloads/make_workload.py --check         # exit 1 if the file is stale
    python3 examples/workloads/make_workload.py --count-tokens  # exact token counts

--count-tokens needs `transformers` (and the `gguf` package) and the SmolLM2 GGUF in
~/.cache/chunkwise/models (override with --model-dir / --gguf-file). It counts the tokens the
engine prefills: for "chat": true requests the prompt is first wrapped as one user message with
the model's chat template (ChatML; SmolLM2 adds its default system message), for raw requests
the prompt is encoded as is. SmolLM2 adds no BOS token.

The workload structure:
  * 5 shared prefixes (support, extract, lighthouse, tutor, cooking), each 300-900 tokens, each
    byte-identical across its requests and placed first in the prompt string;
  * 8 independent short requests (misc) with no shared prefix;
  * 64 requests in all; the first 32 (in file order) arrive at t = 0, the remaining 32 arrive
    one by one over about 10 s. File order is non-decreasing in arrival_s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "assistant.jsonl"

# ---------------------------------------------------------------------------------------------
# (a) Customer support for a fictional bike shop. Chat requests: the user pastes the shop
#     information and then the customer's question.
# ---------------------------------------------------------------------------------------------
SUPPORT_PREFIX = """\
You are the customer-support assistant for Riverside Cycles, a small bicycle shop at 42 Mill Street in Eastbrook. Answer the customer's question using only the shop information below. Be friendly and brief: two or three sentences. If the answer is not in the information, say that you are not sure and suggest calling the shop.

SHOP INFORMATION

Opening hours:
- Monday to Friday: 9:00 to 18:00
- Saturday: 10:00 to 16:00
- Sunday: closed
- Public holidays: closed, except the Saturday before Easter (10:00 to 14:00)

Contact:
- Phone: 555-0142
- Email: help@riversidecycles.example
- The workshop phone is answered from 9:00 to 12:00 on weekdays.

Bikes and accessories:
- City Cruiser (3-speed city bike, steel frame): $420
- Trail Runner 29 (mountain bike, aluminium frame, front suspension): $890
- Swift Road 2 (road bike, 16 speeds, carbon fork): $1,150
- Little Pedal 16 (children's bike for ages 4 to 6, with training wheels): $180
- Volt Commuter (electric bike, 60 km range, 4-hour charge): $2,300
- Helmets: $35 to $90
- Front and rear light set: $28
- U-lock with two keys: $45
- Inner tubes: $7 each

Repairs and servicing:
- Flat tyre repair: $15, usually done while you wait (about 20 minutes).
- Basic tune-up (brakes, gears, chain cleaning, tyre pressure): $55, ready in 2 working days.
- Full service (everything in the tune-up, plus wheel truing and a bearing check): $110, ready in 4 working days.
- Electric bike battery check: $30.
- Tune-ups and full services need a booking. Flat tyre repairs do not need a booking.

Returns and refunds:
- Unused accessories can be returned within 30 days with the receipt for a full refund.
- Bikes can be returned within 14 days if they have been ridden less than 50 km and are undamaged. A restocking fee of 10% applies.
- Electric bikes can be exchanged but not refunded once the battery has been charged.
- Repairs are not refundable, but if the same problem comes back within 30 days we fix it again for free.
- Sale items cannot be returned.

Warranty:
- Frames: 5 years against manufacturing defects.
- Parts and electric bike batteries: 2 years.
- The warranty does not cover crash damage, normal wear (tyres, brake pads, chains) or racing.

Other services:
- Free delivery of any bike within 10 km of the shop; $20 for 10 to 30 km; no delivery beyond 30 km.
- Bike rental: City Cruiser $25 per day, Volt Commuter $45 per day. Bring a photo ID; a $100 deposit is required.
- Students get 10% off accessories with a valid student card.
- Trade-in: we accept used bikes in good condition as credit towards a new bike. Bring the bike in for a free valuation.
- We do not sell second-hand bikes, and we do not repair motorcycles or scooters.

Payment: cash, debit cards and credit cards. For bikes over $800 you can pay in 6 monthly instalments with no interest.

"""

SUPPORT_QUESTIONS = [
    # (text after the prefix, max_tokens, priority)
    ("Customer question: What time do you open on Saturday?", 64, 1),
    ("Customer question: Are you open on Sundays?", 64, 1),
    ("Customer question: How much does the Trail Runner 29 cost?", 64, 1),
    ("Customer question: I bought a helmet last week and never used it. Can I still return it?", 96, 1),
    ("Customer question: My son is 5 years old. Which bike would you recommend for him, and how much is it?", 96, 1),
    ("Customer question: How long does a basic tune-up take, and do I need to book it?", 96, 1),
    ("Customer question: I got a flat tyre on my way to work. Can you fix it today, and how much will it cost?", 96, 2),
    ("Customer question: I live 15 km from the shop. Will you deliver my new bike, and is delivery free?", 96, 1),
    ("Customer question: Can I rent an electric bike for the weekend? What do I need to bring?", 96, 1),
    ("Customer question: I'm a student. Do I get a discount on a U-lock?", 64, 1),
    ("Customer question: The frame of my bike cracked after 3 years of normal riding. Is that covered by the warranty?", 96, 2),
    ("Customer question: Do you repair scooters?", 64, 1),
    ("Customer question: I want the Swift Road 2 but I can't pay for it all at once. Do you have a payment plan?", 96, 1),
]

# ---------------------------------------------------------------------------------------------
# (b) Few-shot extraction: raw completion ("chat": false); the prompt ends with "Output:" so
#     the model continues with the fields.
# ---------------------------------------------------------------------------------------------
EXTRACT_PREFIX = """\
Below are short messages that customers sent to a food delivery app. For each message, write three fields:
- sentiment: positive, negative or neutral
- topic: delivery, food, payment, app or staff
- reply: yes if the customer expects an answer from us, otherwise no
Write the fields on one line, in this order, separated by semicolons.

Message: The pizza arrived hot and the driver was really polite. Thanks!
Output: sentiment=positive; topic=delivery; reply=no

Message: I was charged twice for my order last night. Please refund one of the payments.
Output: sentiment=negative; topic=payment; reply=yes

Message: The app keeps logging me out every time I open the menu page. How do I fix this?
Output: sentiment=negative; topic=app; reply=yes

Message: Can I change the delivery address after I have placed an order?
Output: sentiment=neutral; topic=delivery; reply=yes

Message: Best noodle soup I have had in months, and the portion was huge.
Output: sentiment=positive; topic=food; reply=no

Message: The burger was cold and the fries were missing from the bag. I want my money back.
Output: sentiment=negative; topic=food; reply=yes

Message: The woman on the support line sorted out my problem in two minutes. Great service.
Output: sentiment=positive; topic=staff; reply=no

Message: I paid with a gift card today and it worked fine.
Output: sentiment=neutral; topic=payment; reply=no

"""

EXTRACT_MESSAGES = [
    "My order took ninety minutes to arrive and the soup had spilled everywhere.",
    "The new dark mode in the app looks great.",
    "Do you accept cash on delivery?",
    "The curry was delicious but a bit too spicy for my kids.",
    "The driver was rude and threw the bag at my door.",
    "I can't add my credit card. The app says error 402. Can someone help me?",
    "Thank you for the free dessert, it made my evening!",
    "There was a hair in my salad. This is disgusting. Please call me back.",
    "Where can I see my past orders in the app?",
    "The delivery was on time, as usual.",
    "The cook at the Main Street kitchen always gets my order exactly right.",
    "I got a refund for the missing drink within an hour. Thanks.",
]

# ---------------------------------------------------------------------------------------------
# (c) Reading comprehension: an original article about lighthouses, then a question.
# ---------------------------------------------------------------------------------------------
LIGHTHOUSE_PREFIX = """\
Read the article below and answer the question that follows it in one or two sentences.

Keepers of the Light: A Short History of Lighthouses

For as long as people have sailed, they have needed a way to find the coast at night without running into it. The earliest guides were simple fires lit on hilltops near harbours. Sailors learned to steer towards the glow, and nearby villages often kept the fires burning in return for a small payment from the ships that arrived safely.

The most famous early lighthouse was the Pharos of Alexandria, built in Egypt around 280 BC. It stood on a small island at the entrance to the harbour and was probably more than 100 metres tall, which made it one of the tallest buildings of the ancient world. A fire burned at the top, and some writers claimed that a polished metal mirror reflected its light far out to sea. The Pharos stood for more than a thousand years before a series of earthquakes brought it down. Its name lives on: in several languages, including French, Italian and Spanish, the word for lighthouse comes from "Pharos".

The Romans built lighthouses across their empire, from the coast of Spain to the cliffs of Dover in England. After the empire fell, however, few new lighthouses were built for many centuries. In the Middle Ages, monks and local lords sometimes kept lamps burning in church towers near dangerous rocks, but the light from candles and oil lamps was weak and could not be seen from far away.

The great age of lighthouse building began in the eighteenth century, when trade by sea grew quickly and shipwrecks became a serious problem. Building a tower on a bare rock in the open sea was extremely difficult. The first Eddystone Lighthouse, off the south coast of England, was made of wood and was swept away by a storm in 1703, together with its builder. In 1759 the engineer John Smeaton completed a new Eddystone tower from large blocks of granite that locked together like the pieces of a puzzle. His design was so strong that it stood for over a century, and it became the model for many of the lighthouses that followed.

The next big step was a better light. In 1822 the French physicist Augustin Fresnel invented a new kind of lens made of many rings of glass. Instead of one thick, heavy lens, the Fresnel lens used thin curved sections that bent the light into a single strong beam. A lamp that had been visible for a few kilometres could now be seen from more than 30 kilometres away. The lens was so successful that it was soon used in lighthouses all over the world.

Each lighthouse also needed a way to be recognised. Engineers gave every light its own pattern, called its character: one light might flash white every five seconds, while its neighbour might show two red flashes every ten seconds. Sailors carried lists of these patterns, so a captain who saw a light at night could tell exactly which lighthouse it was. In daytime, the towers were painted with stripes, bands or checks for the same reason.

For most of their history, lighthouses needed keepers. A keeper lit the lamp at sunset, wound the clockwork that turned the lens, trimmed the wicks, cleaned the glass and kept a log of the weather and of passing ships. The work was lonely, especially on rock towers where keepers could be cut off by storms for weeks. Many keepers lived at the lighthouse with their families, and some famous rescues at sea were carried out by keepers and their children.

In the twentieth century, electricity replaced oil lamps and automatic machines took over the keepers' tasks. In many countries the last keepers left their towers in the 1980s and 1990s. Today ships find their way with satellite navigation, but lighthouses are still kept working as a backup in case electronic systems fail. Many old towers have also become museums, hotels or homes for seabirds, and they remain some of the best-loved buildings on the coast.

"""

LIGHTHOUSE_QUESTIONS = [
    ("Question: When was the Pharos of Alexandria built?", 64, 0),
    ("Question: What brought down the Pharos of Alexandria?", 64, 0),
    ("Question: Which languages take their word for lighthouse from the name Pharos?", 64, 0),
    ("Question: What happened to the first Eddystone Lighthouse?", 64, 0),
    ("Question: What material did John Smeaton use for his Eddystone tower?", 64, 0),
    ("Question: Who invented the Fresnel lens, and in which year?", 64, 0),
    ("Question: How far away could a light with a Fresnel lens be seen?", 64, 0),
    ("Question: What is the \"character\" of a lighthouse?", 64, 0),
    ("Question: Why were lighthouse towers painted with stripes or bands?", 64, 0),
    ("Question: Name three tasks that a lighthouse keeper did.", 96, 0),
    ("Question: When did the last keepers leave their towers in many countries?", 64, 0),
    ("Question: Why are lighthouses still kept working if ships use satellite navigation?", 64, 1),
    ("Question: Summarize the article in two sentences.", 128, 0),
]

# ---------------------------------------------------------------------------------------------
# (d) Middle-school science tutor.
# ---------------------------------------------------------------------------------------------
TUTOR_PREFIX = """\
You are Sam, a patient science tutor for middle-school students aged 11 to 14. Follow these guidelines when you answer the student's question at the end.

How to explain:
- Use short sentences and everyday words. If you must use a scientific term, explain it straight away in plain language.
- Start with the direct answer in one sentence, then give a short explanation.
- Give one example from everyday life, such as cooking, sports, the weather or the playground.
- Keep the whole answer under 120 words.
- If the question needs a calculation, show each step on its own line and include the units.

Topics you help with:
- Physics: forces, motion, energy, electricity, magnets, light and sound.
- Chemistry: states of matter, mixtures and solutions, simple chemical reactions, acids and bases.
- Biology: cells, the human body, plants and photosynthesis, food chains and ecosystems.
- Earth and space: the water cycle, rocks, weather, the Sun, the Moon and the planets.

Facts you may quote:
- Water freezes at 0 °C and boils at 100 °C at sea level.
- Light travels at about 300,000 kilometres per second. Sound travels through air at about 340 metres per second.
- The Earth takes about 365 days to go around the Sun and 24 hours to spin once on its axis.
- The Moon takes about 27 days to go around the Earth. It does not make its own light; it reflects light from the Sun.
- Plants make their own food by photosynthesis: carbon dioxide + water, using light energy, gives glucose + oxygen.
- Speed = distance ÷ time. Density = mass ÷ volume.
- The human heart has four chambers, and an adult has about 206 bones.

Safety and honesty:
- Never suggest experiments with fire, with electricity from wall sockets, or with cleaning chemicals. Only suggest safe home experiments, done with an adult.
- If you are not sure about something, say so, and suggest that the student asks their teacher.
- Help the student understand the idea instead of just giving the answer to a homework question.
- Be encouraging. Mistakes are a normal part of learning.

"""

TUTOR_QUESTIONS = [
    ("Student: Why is the sky blue?", 128, 1),
    ("Student: What is the difference between a solid, a liquid and a gas?", 128, 1),
    ("Student: How do plants make their food?", 128, 1),
    ("Student: A cyclist rides 30 kilometres in 2 hours. What is her average speed?", 96, 2),
    ("Student: Why do we see lightning before we hear the thunder?", 128, 1),
    ("Student: What is the water cycle?", 128, 1),
    ("Student: Why does the Moon seem to change shape during the month?", 128, 1),
    ("Student: What does the heart do?", 96, 1),
    ("Student: Is salt dissolving in water a chemical change or a physical change?", 96, 1),
    ("Student: Why does a magnet stick to the fridge but not to a wooden door?", 128, 1),
]

# ---------------------------------------------------------------------------------------------
# (e) Cooking assistant with a recipe.
# ---------------------------------------------------------------------------------------------
COOKING_PREFIX = """\
You are a helpful cooking assistant. I am making the recipe below. Answer my question about it clearly and briefly, using metric units.

RECIPE: Lemon and Herb Roast Chicken with Potatoes (serves 4)

Ingredients:
- 1 whole chicken, about 1.6 kg
- 1 kg small potatoes, cut in half
- 2 lemons
- 4 cloves of garlic, crushed
- 3 tablespoons olive oil
- 1 tablespoon fresh thyme leaves (or 1 teaspoon dried thyme)
- 1 tablespoon chopped fresh rosemary
- 1 teaspoon salt and half a teaspoon of black pepper
- 200 ml chicken stock

Method:
1. Heat the oven to 200 °C (180 °C for a fan oven). Take the chicken out of the fridge 30 minutes before cooking.
2. Put the potatoes in a large roasting tin. Toss them with 1 tablespoon of the oil, half of the salt and a little pepper.
3. Grate the zest of one lemon into a small bowl. Mix it with the garlic, the herbs, the rest of the oil and the rest of the salt and pepper.
4. Pat the chicken dry with kitchen paper and rub the herb mixture all over the skin. Cut the zested lemon in half and put both halves inside the chicken.
5. Place the chicken on top of the potatoes. Pour the stock into the tin around the potatoes, not over the chicken.
6. Roast for about 1 hour 20 minutes, turning the potatoes once halfway through. The chicken is cooked when the juices run clear and a thermometer in the thickest part of the thigh reads 75 °C.
7. Let the chicken rest under foil for 15 minutes before carving. Squeeze the second lemon over the potatoes just before serving.

Notes:
- As a rule, roast a chicken for 20 minutes per 500 g, plus 20 minutes.
- Leftover chicken keeps in the fridge for up to 3 days in a covered container.
- For a gluten-free meal, check that the stock is gluten-free.
- Carrots or onions can be added to the tin with the potatoes.

"""

COOKING_QUESTIONS = [
    ("My question: What temperature should I set my fan oven to?", 64, 0),
    ("My question: How long should the chicken rest before I carve it?", 64, 0),
    ("My question: I only have dried thyme. How much should I use?", 64, 0),
    ("My question: How can I tell when the chicken is cooked?", 96, 0),
    ("My question: My chicken weighs 2 kg, not 1.6 kg. How long should I roast it?", 96, 1),
    ("My question: Can I add carrots to this recipe?", 64, 0),
    ("My question: How long can I keep the leftovers?", 64, 0),
    ("My question: Write a shopping list for this recipe.", 128, 0),
]

# ---------------------------------------------------------------------------------------------
# Independent short requests with no shared prefix: (prompt, max_tokens, chat, priority).
# ---------------------------------------------------------------------------------------------
MISC_REQUESTS = [
    ("What is the capital of Australia?", 32, True, 2),
    ("Rewrite this sentence so that it sounds more polite: Send me the report now.", 64, True, 1),
    ("Write a short email to my manager to say that I will be 15 minutes late for this morning's meeting.", 128, True, 1),
    ("What is 12 times 8?", 32, True, 2),
    ("Give me three tips for sleeping better.", 128, True, 0),
    ("What is the difference between a café and a restaurant?", 96, True, 0),
    ("Summarize in one sentence: The town council met on Tuesday and agreed to build a new playground in the park next to the library. Work will start in May and should finish before the summer holidays.", 64, True, 1),
    ("Once upon a time, in a small village by the sea,", 64, False, 0),
]

# name -> (prefix, chat, default-free list of (suffix, max_tokens, priority))
GROUPS = [
    ("support", SUPPORT_PREFIX, True, SUPPORT_QUESTIONS),
    ("extract", EXTRACT_PREFIX, False, [(f"Message: {m}\nOutput:", 32, 0) for m in EXTRACT_MESSAGES]),
    ("lighthouse", LIGHTHOUSE_PREFIX, True, LIGHTHOUSE_QUESTIONS),
    ("tutor", TUTOR_PREFIX, True, TUTOR_QUESTIONS),
    ("cooking", COOKING_PREFIX, True, COOKING_QUESTIONS),
]

ARRIVAL_SEED = 20240611  # fixed: the arrival times are part of the shipped file
ARRIVAL_SPAN_S = 10.0


def build_requests() -> list[dict]:
    """Returns the requests in file order (each dict also carries its group name under '_group')."""
    queues: list[list[dict]] = []
    for name, prefix, chat, items in GROUPS:
        q = []
        for i, (suffix, max_tokens, priority) in enumerate(items, start=1):
            q.append({"id": f"{name}-{i:02d}", "prompt": prefix + suffix, "max_tokens": max_tokens,
                      "chat": chat, "priority": priority, "_group": name})
        queues.append(q)
    queues.append([{"id": f"misc-{i:02d}", "prompt": p, "max_tokens": mt, "chat": chat,
                    "priority": pr, "_group": "misc"}
                   for i, (p, mt, chat, pr) in enumerate(MISC_REQUESTS, start=1)])

    # Round-robin across the groups so that every part of the file mixes the prefixes.
    ordered: list[dict] = []
    while any(queues):
        for q in queues:
            if q:
                ordered.append(q.pop(0))

    # First half: a burst at t = 0. Second half: increasing arrivals spread over ~10 s with
    # uneven gaps (fixed seed), rounded to milliseconds.
    n_burst = len(ordered) // 2
    rng = random.Random(ARRIVAL_SEED)
    gaps = [rng.uniform(0.2, 1.0) for _ in range(len(ordered) - n_burst)]
    scale = ARRIVAL_SPAN_S / sum(gaps)
    t = 0.0
    for i, r in enumerate(ordered):
        if i < n_burst:
            r["arrival_s"] = 0.0
        else:
            t += gaps[i - n_burst] * scale
            r["arrival_s"] = round(t, 3)
    return ordered


def validate(requests: list[dict]) -> None:
    ids = [r["id"] for r in requests]
    assert len(ids) == len(set(ids)), "duplicate id"
    assert len(requests) >= 48
    for r in requests:
        assert 32 <= r["max_tokens"] <= 128, r["id"]
        assert 0 <= r["priority"] <= 2, r["id"]
        assert r["arrival_s"] >= 0, r["id"]
    for name, prefix, _, _ in GROUPS:
        members = [r for r in requests if r["_group"] == name]
        assert all(r["prompt"].startswith(prefix) for r in members), name
        assert 1200 <= len(prefix) <= 4000, (name, len(prefix))
    times = [r["arrival_s"] for r in requests]
    assert times == sorted(times), "arrival times must be non-decreasing in file order"


def render(requests: list[dict]) -> str:
    lines = []
    for r in requests:
        obj = {k: r[k] for k in ("id", "prompt", "max_tokens", "chat", "arrival_s", "priority")}
        lines.append(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Token counting (optional, needs transformers)
# ---------------------------------------------------------------------------------------------
def count_tokens(requests: list[dict], model_dir: str, gguf_file: str) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415 (optional dependency)

    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)

    def engine_ids(r: dict) -> list[int]:
        if r["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                           tokenize=False, add_generation_prompt=True)
        else:
            text = r["prompt"]
        return tok(text, add_special_tokens=False).input_ids

    ids = {r["id"]: engine_ids(r) for r in requests}
    total = sum(len(v) for v in ids.values())

    def common_prefix_len(seqs: list[list[int]]) -> int:
        n = min(len(s) for s in seqs)
        for i in range(n):
            if any(s[i] != seqs[0][i] for s in seqs[1:]):
                return i
        return n

    wrap = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                   add_generation_prompt=True)
    head = wrap[: wrap.index("x")]
    print(f"chat wrapper: {len(tok(head, add_special_tokens=False).input_ids)} tokens before the "
          f"user text, {len(tok(wrap, add_special_tokens=False).input_ids) - len(tok(head + 'x', add_special_tokens=False).input_ids)} after it")
    print(f"{'group':<11} {'n':>3} {'chat':>5} {'prefix chars':>12} {'prefix tok':>10} "
          f"{'common tok':>10} {'prompt tok min-max':>18} {'group total':>11}")
    shared_all = 0
    for name in [g[0] for g in GROUPS] + ["misc"]:
        members = [r for r in requests if r["_group"] == name]
        seqs = [ids[r["id"]] for r in members]
        group_total = sum(len(s) for s in seqs)
        prefix = next((g[1] for g in GROUPS if g[0] == name), "")
        ptoks = len(tok(prefix, add_special_tokens=False).input_ids) if prefix else 0
        common = common_prefix_len(seqs) if prefix else 0
        shared_all += common * len(seqs)
        chat = {True: "yes", False: "no"}[members[0]["chat"]] if len({r["chat"] for r in members}) == 1 else "mixed"
        print(f"{name:<11} {len(members):>3} {chat:>5} {len(prefix):>12} {ptoks:>10} {common:>10} "
              f"{min(map(len, seqs)):>8}-{max(map(len, seqs)):<9} {group_total:>11}")

    # Tokens a perfect token-level prefix cache could skip: total minus the number of nodes of
    # a trie holding every prompt (each distinct prefix computed once).
    trie: dict = {}
    nodes = 0
    for seq in ids.values():
        node = trie
        for t in seq:
            if t not in node:
                node[t] = {}
                nodes += 1
            node = node[t]

    def block_reusable(block: int) -> int:
        seen: set = set()
        computed = 0
        for seq in ids.values():
            full = len(seq) // block
            for b in range(full):
                key = tuple(seq[: (b + 1) * block])
                if key not in seen:
                    seen.add(key)
                    computed += block
            computed += len(seq) - full * block
        return total - computed

    print(f"requests: {len(requests)}   total prompt tokens (engine input): {total}")
    print(f"shared-prefix tokens (group common prefix x members): {shared_all} "
          f"= {shared_all / total:.1%} of prompt tokens")
    print(f"reusable by a token-level prefix cache (each distinct prefix computed once): "
          f"{total - nodes} = {(total - nodes) / total:.1%}")
    for b in (16, 32):
        reuse = block_reusable(b)
        print(f"reusable at block size {b} (full blocks only): {reuse} = {reuse / total:.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs")
    ap.add_argument("--count-tokens", action="store_true", help="print exact token counts")
    ap.add_argument("--model-dir", default=os.path.expanduser("~/.cache/chunkwise/models"))
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()

    requests = build_requests()
    validate(requests)
    text = render(requests)

    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            print(f"{args.out} is stale; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({len(requests)} requests)")
    else:
        args.out.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {args.out} ({len(requests)} requests)")

    if args.count_tokens:
        count_tokens(requests, args.model_dir, args.gguf_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
