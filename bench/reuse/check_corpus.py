#!/usr/bin/env python3
"""Validate bench/reuse/corpus.jsonl (stdlib only).

Checks: 40 lines of JSON; fields and types; 110-170 words per passage text with no
newlines; exactly 2 questions each; every answer appears verbatim (case-sensitive)
in its own passage text and nowhere (case-insensitive) in any other passage's title or
text; unique ids.
Also reports (warning only) answers whose first occurrence lies past two thirds of
the passage. Exit status 0 when all checks pass, 1 otherwise.
"""
import json
import os
import sys

EXPECTED_PASSAGES = 40
MIN_WORDS, MAX_WORDS = 110, 170
QUESTIONS_PER_PASSAGE = 2


def main(argv):
    path = argv[1] if len(argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")
    errors, warnings = [], []
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()

    if len(lines) != EXPECTED_PASSAGES:
        errors.append("expected %d lines, found %d" % (EXPECTED_PASSAGES, len(lines)))

    passages = []
    for n, line in enumerate(lines, 1):
        try:
            p = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append("line %d: invalid JSON: %s" % (n, e))
            continue
        if not isinstance(p, dict):
            errors.append("line %d: not a JSON object" % n)
            continue
        if set(p) != {"id", "title", "text", "questions"}:
            errors.append("line %d: fields are %s" % (n, sorted(p)))
        for key in ("id", "title", "text"):
            if not isinstance(p.get(key), str) or not p.get(key).strip():
                errors.append("line %d: %r missing or not a non-empty string" % (n, key))
        qs = p.get("questions")
        if not isinstance(qs, list):
            errors.append("line %d: 'questions' is not a list" % n)
            qs = []
        elif len(qs) != QUESTIONS_PER_PASSAGE:
            errors.append("line %d: %d questions, expected %d" % (n, len(qs), QUESTIONS_PER_PASSAGE))
        for i, q in enumerate(qs):
            if (not isinstance(q, dict) or set(q) != {"question", "answer"}
                    or not all(isinstance(q[k], str) and q[k].strip() for k in q)):
                errors.append("line %d: question %d malformed: %r" % (n, i, q))
        passages.append((n, p))

    ids = [p.get("id") for _, p in passages]
    dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dup:
        errors.append("duplicate ids: %s" % dup)

    word_counts = []
    for n, p in passages:
        text = p.get("text")
        if not isinstance(text, str):
            continue
        if "\n" in text or "\r" in text:
            errors.append("%s: newline inside text" % p.get("id"))
        wc = len(text.split())
        word_counts.append(wc)
        if not MIN_WORDS <= wc <= MAX_WORDS:
            errors.append("%s: %d words (want %d-%d)" % (p.get("id"), wc, MIN_WORDS, MAX_WORDS))

    n_answers = 0
    for n, p in passages:
        text = p.get("text") if isinstance(p.get("text"), str) else ""
        for q in p.get("questions") or []:
            if not isinstance(q, dict) or not isinstance(q.get("answer"), str):
                continue
            ans = q["answer"]
            n_answers += 1
            nw = len(ans.split())
            if not 1 <= nw <= 4:
                errors.append("%s: answer %r has %d words (want 1-4)" % (p.get("id"), ans, nw))
            pos = text.find(ans)
            if pos < 0:
                errors.append("%s: answer %r not found verbatim in its passage" % (p.get("id"), ans))
            elif pos > len(text) * 2 / 3:
                warnings.append("%s: answer %r first occurs at %.0f%% of the passage"
                                % (p.get("id"), ans, 100.0 * pos / len(text)))
            for m, other in passages:
                if other is p or not isinstance(other.get("text"), str):
                    continue
                # Prompts carry "Passage: <title>" + text, so check the title too.
                haystack = (str(other.get("title", "")) + " " + other["text"]).lower()
                if ans.lower() in haystack:
                    errors.append("%s: answer %r also appears in %s"
                                  % (p.get("id"), ans, other.get("id")))

    print("file: %s" % path)
    print("passages: %d, answers checked: %d" % (len(passages), n_answers))
    if word_counts:
        print("words per passage: min %d, max %d, mean %.1f"
              % (min(word_counts), max(word_counts), sum(word_counts) / len(word_counts)))
    for w in warnings:
        print("WARNING: " + w)
    for e in errors:
        print("ERROR: " + e)
    print("RESULT: %s (%d errors, %d warnings)" % ("PASS" if not errors else "FAIL",
                                                  len(errors), len(warnings)))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
