#!/usr/bin/env python3
"""The worked example's corpus: the King James Bible as plain text, one document per chapter,
split into training and held-out chapters.

    python scripts/demo_corpus.py OUT_DIR [VERSES_FILE]

The text comes from Debian's `bible-kjv-text` package (read with its `bible` program, package
`bible-kjv`): the King James Version of 1611, public domain (its copyright expired; Debian's
copyright file says so; the packaging is GPL-2+). Without VERSES_FILE the script runs
`bible -f Gen1:1-Rev22:21`, which prints the 31,102 verses one per line ("Ge1:1 In the beginning
..."). Verse references are dropped and each chapter's verses joined into one paragraph: 1,189
documents. Every 20th chapter (in Bible order, so every part of the book is represented) is held
out, whole. Note that the Bible repeats itself (parallel passages in Kings and Chronicles, in the
Gospels), so some held-out sentences have near-copies in the training chapters.

Writes train.jsonl / eval.jsonl ({"text", "id"} per line; what `gpt2-serve train` reads) and
train.txt / eval.txt (the same chapters, separated by blank lines).
"""

import json
import re
import subprocess
import sys
from itertools import groupby
from pathlib import Path

HELD_OUT_EVERY = 20
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")  # "1Sm3:10 And the LORD came, ..."


def read_verses(path: Path | None) -> list[str]:
    if path is not None:
        return path.read_text().splitlines()
    try:
        out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv")
    return out.stdout.splitlines()


def chapters(lines: list[str]) -> list[dict]:
    verses = [VERSE.match(line) for line in lines if line.strip()]
    if not verses or None in verses:
        bad = next((line for line, v in zip(lines, verses, strict=False) if v is None), "no verses at all")
        sys.exit(f"unexpected line in the verses: {bad!r}")
    docs = []
    for (book, chapter), group in groupby(verses, key=lambda v: (v.group(1), v.group(2))):
        docs.append({"id": f"{book}{chapter}", "text": " ".join(v.group(4).strip() for v in group)})
    return docs


def main(out: Path, verses_file: Path | None) -> None:
    docs = chapters(read_verses(verses_file))
    if len(docs) != 1189:
        sys.exit(f"expected the 1,189 chapters of the King James Bible, found {len(docs)}")
    splits = {"train": [], "eval": []}
    for i, doc in enumerate(docs, 1):
        splits["eval" if i % HELD_OUT_EVERY == 0 else "train"].append(doc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(
        "# The King James Bible, split for `gpt2-serve train` (made by scripts/demo_corpus.py)\n\n"
        "Source: Debian's bible-kjv-text (the `bible` program of bible-kjv); the 1611 text is in the public "
        "domain.\nOne document per chapter (1,189), verse references dropped; every 20th chapter in Bible "
        "order is held out whole.\nParallel passages (Kings/Chronicles, the Gospels) mean some held-out "
        "sentences have near-copies in training.\n\ntrain.jsonl / eval.jsonl: one chapter per line, "
        '{"text", "id"} (what `gpt2-serve train` reads); train.txt / eval.txt: the same chapters, '
        "blank-line separated.\n")
    for name, part in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
        (out / f"{name}.txt").write_text("\n\n".join(d["text"] for d in part) + "\n")
        words = sum(len(d["text"].split()) for d in part)
        print(f"{name}: {len(part)} chapters, {words:,} words, {sum(len(d['text']) for d in part):,} characters")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None)
