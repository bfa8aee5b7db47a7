"""The datasketch baseline of bench/minhash.py's end-to-end mode: the script a user would write.

    python bench/minhash_datasketch.py INPUT.jsonl KEPT.txt [--threshold 0.8] [--num-perm 128] [--ngram 5] [--seed 0]

Reads the JSONL file line by line (ShareGPT `conversations`, OpenAI `messages`, or `text` rows), renders each
conversation as pond does (`role: content` blocks joined by blank lines), shingles it as pond does (lowercase,
runs of non-word characters separate words, word n-grams; a text shorter than n words is one shingle), builds a
datasketch MinHash per document and, in file order, queries a MinHashLSH index with it: a document with a hit
is a duplicate, any other is inserted and kept. Writes the kept documents' line numbers, one a line, and prints
one JSON line of counts. It imports nothing from pond, so its start-up is datasketch's own.
"""
from __future__ import annotations

import argparse
import json
import re

from datasketch import MinHash, MinHashLSH

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SEPARATORS = re.compile(r"[^\w]+")


def text_of(row: dict) -> str:
    turns = row.get("conversations") or row.get("messages")
    if isinstance(turns, list):
        return "\n\n".join(f"{ROLES.get(t.get('from', t.get('role')), 'user')}: {t.get('value', t.get('content'))}"
                           for t in turns if isinstance(t, dict))
    return str(row.get("text") or "")


def shingles(text: str, n: int) -> set[bytes]:
    words = [w for w in SEPARATORS.split(text.lower()) if w]
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("kept")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    kept, duplicates, skipped = [], 0, 0
    with open(args.input, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            found = shingles(text_of(row), args.ngram) if isinstance(row, dict) else set()
            if not found:
                skipped += 1
                continue
            m = MinHash(num_perm=args.num_perm, seed=args.seed)
            m.update_batch(list(found))
            if lsh.query(m):
                duplicates += 1
                continue
            lsh.insert(line_no, m, check_duplication=False)
            kept.append(line_no)
    with open(args.kept, "w") as out:
        out.writelines(f"{k}\n" for k in kept)
    print(json.dumps({"kept": len(kept), "duplicates": duplicates, "skipped": skipped, "bands": lsh.b, "rows": lsh.r}))


if __name__ == "__main__":
    main()
