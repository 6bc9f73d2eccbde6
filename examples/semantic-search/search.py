"""Semantic search over the King James Bible with /v1/embeddings, and how well it retrieves.

    python examples/semantic-search/search.py [--model DIR] [--reference FILE] [--url URL] [--json OUT]
    make search      # the same on `make demo`'s model, with its training chapters as the reference

1. The corpus: Debian's bible-kjv-text (the `bible` program, as scripts/demo_corpus.py reads it),
   each chapter cut into passages of whole consecutive verses of at most --passage-tokens tokens.
2. The server: --url, or `gpt2-serve serve` started here on the model, with
   GPT2_EMBEDDING_REFERENCE=--reference so that standardised embeddings are available.
3. Every passage and every query of queries.jsonl (60 questions in plain modern English, each with
   the chapters that answer it, labelled by hand) is embedded through the official openai client,
   for each configuration: mean or last pooling, raw or standardised, the final layer or a middle one.
4. A query ranks the 1,189 chapters by their best passage's cosine similarity; the figures are
   recall@1, recall@10 (a relevant chapter among the first k) and MRR, next to two baselines:
   chance, and TF-IDF over the same passages (scikit-learn, the same max-over-passages ranking).
   Also the mean cosine similarity of random passage pairs: how anisotropic the vectors are. A
   control set (the first half of 60 random passages, to find their own chapter) shows what the
   same search does when a query shares the passage's words.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from demo_corpus import VERSE, read_verses  # noqa: E402

from app.model.loader import PACKAGED_TOKENIZER  # noqa: E402
from app.model.tokenizer import Tokenizer  # noqa: E402

DEMO = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2-serve" / "demo"
BATCH = 64  # inputs per request (within a request's share of the queue)
TOP_K = 10


def passages(tokenizer: Tokenizer, max_tokens: int) -> tuple[list[str], list[str]]:
    """(text, chapter id) of each passage: whole consecutive verses of one chapter, at most
    max_tokens tokens together (a longer verse alone is a passage of its own)."""
    texts, chapters = [], []
    current, current_tokens, current_chapter = [], 0, None
    for line in read_verses(None):
        match = VERSE.match(line)
        chapter, verse = match.group(1) + match.group(2), match.group(4).strip()
        n = len(tokenizer.encode(" " + verse))
        if current and (chapter != current_chapter or current_tokens + n > max_tokens):
            texts.append(" ".join(current))
            chapters.append(current_chapter)
            current, current_tokens = [], 0
        current.append(verse)
        current_tokens += n
        current_chapter = chapter
    texts.append(" ".join(current))
    chapters.append(current_chapter)
    return texts, chapters


def start_server(model: str, reference: str | None) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GPT2_MODEL": model, "GPT2_HOST": "127.0.0.1", "GPT2_PORT": str(port),
           "GPT2_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    if reference:
        env["GPT2_EMBEDDING_REFERENCE"] = reference
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1800  # the first start measures the reference corpus's statistics
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    server.kill()
    sys.exit("the server did not become ready")


def embed(client: OpenAI, model: str, texts: list[str], **options) -> np.ndarray:
    """[len(texts), C] unit vectors, BATCH texts per request (the client asks for base64)."""
    vectors = []
    for i in range(0, len(texts), BATCH):
        response = client.embeddings.create(model=model, input=texts[i : i + BATCH], extra_body=options)
        vectors += [d.embedding for d in response.data]
    return np.asarray(vectors, dtype=np.float32)


def half_passages(texts: list[str], chapter_of: np.ndarray, n: int = 60) -> tuple[list[str], list[set[int]]]:
    """A control set: the first half (in words) of n random passages of 20 words or more, each to
    find its own chapter. The words are the passage's own, in its language: what a lexical search
    does best, and the easiest case for any embedding."""
    rng = np.random.default_rng(2)
    picked = rng.choice([i for i, t in enumerate(texts) if len(t.split()) >= 20], size=n, replace=False)
    queries = [" ".join(texts[i].split()[: len(texts[i].split()) // 2]) for i in picked]
    return queries, [{int(chapter_of[i])} for i in picked]


def chapter_ranking(similarity: np.ndarray, chapter_of: np.ndarray, num_chapters: int) -> np.ndarray:
    """[queries, passages] similarities -> [queries, chapters] chapter indices, best first (a chapter
    scores its best passage)."""
    best = np.full((similarity.shape[0], num_chapters), -np.inf, dtype=np.float32)
    np.maximum.at(best.T, chapter_of, similarity.T)
    return np.argsort(-best, axis=1, kind="stable")


def metrics(ranking: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    first = np.array([next(r for r, c in enumerate(row) if c in rel) + 1 for row, rel in zip(ranking, relevant,
                                                                                            strict=True)])
    return {"recall@1": float(np.mean(first <= 1)), f"recall@{TOP_K}": float(np.mean(first <= TOP_K)),
            "mrr": float(np.mean(1.0 / first)), "median_rank": float(np.median(first))}


def chance(relevant: list[set[int]], num_chapters: int, trials: int = 2000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    runs = [metrics(np.stack([rng.permutation(num_chapters) for _ in relevant]), relevant) for _ in range(trials)]
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}


def tfidf(passage_texts: list[str], queries: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    matrix = vectorizer.fit_transform(passage_texts)
    return (vectorizer.transform(queries) @ matrix.T).toarray()


def anisotropy(vectors: np.ndarray, pairs: int = 5000) -> float:
    """The mean cosine similarity of random pairs of (unit) vectors: near 1 means they all point one way."""
    rng = np.random.default_rng(1)
    a, b = rng.integers(len(vectors), size=(2, pairs))
    keep = a != b
    return float(np.mean(np.sum(vectors[a[keep]] * vectors[b[keep]], axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO / "demo-model"), help="a model directory (default: make demo's)")
    parser.add_argument("--reference", default=str(DEMO / "demo-corpus" / "train.jsonl"),
                        help="GPT2_EMBEDDING_REFERENCE's corpus (default: make demo's training chapters)")
    parser.add_argument("--url", help="a running server instead (started with GPT2_EMBEDDING_REFERENCE)")
    parser.add_argument("--queries", default=str(Path(__file__).with_name("queries.jsonl")))
    parser.add_argument("--passage-tokens", type=int, default=128)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    if not args.url and not Path(args.model).is_dir():
        sys.exit(f"no model at {args.model}: run `make demo` first, or pass --model or --url")
    tokenizer = Tokenizer(PACKAGED_TOKENIZER)
    texts, chapters = passages(tokenizer, args.passage_tokens)
    names = list(dict.fromkeys(chapters))
    index = {name: i for i, name in enumerate(names)}
    chapter_of = np.array([index[c] for c in chapters])
    labelled = [json.loads(line) for line in Path(args.queries).read_text().splitlines() if line.strip()]
    descriptions = [q["query"] for q in labelled], [{index[c] for c in q["relevant"]} for q in labelled]
    query_sets = {"descriptions": descriptions, "half-passages": half_passages(texts, chapter_of)}
    print(f"{len(texts)} passages of at most {args.passage_tokens} tokens from {len(names)} chapters; "
          f"{len(labelled)} labelled queries")

    server = None
    url = args.url
    if url is None:
        server, url = start_server(args.model, args.reference)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("GPT2_API_KEY", "none"), max_retries=0,
                        timeout=600)
        info = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
        results = {kind: {"chance": chance(relevant, len(names)),
                          "tf-idf": metrics(chapter_ranking(tfidf(texts, queries), chapter_of, len(names)), relevant)}
                   for kind, (queries, relevant) in query_sets.items()}
        spreads = {}
        for pooling, layer in [("mean", None), ("last", None), ("mean", 2), ("mean", 0)]:
            for standardize in (False, True):
                options = {"pooling": pooling, "standardize": standardize} | ({} if layer is None else {"layer": layer})
                name = f"{pooling}, {'final layer' if layer is None else f'layer {layer}'}, " \
                       f"{'standardised' if standardize else 'raw'}"
                start = time.monotonic()
                p = embed(client, info["id"], texts, **options)
                spreads[name] = anisotropy(p)
                for kind, (queries, relevant) in query_sets.items():
                    q = embed(client, info["id"], queries, **options)
                    results[kind][name] = metrics(chapter_ranking(q @ p.T, chapter_of, len(names)), relevant)
                print(f"  {name}: embedded in {time.monotonic() - start:.0f} s", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)

    print(f"\nmodel {info['id']} ({info['num_parameters'] / 1e6:.1f}M parameters); chapters ranked by their best "
          "passage; R@k as a share and a count of queries")
    for kind, table in results.items():
        n = len(query_sets[kind][0])
        print(f"\n{kind} ({n} queries)")
        print(f"{'method':<34} {'R@1':>11} {f'R@{TOP_K}':>11} {'MRR':>6} {'median rank':>12} {'mean cos':>9}")
        for name, m in table.items():
            spread = f"{spreads[name]:9.3f}" if name in spreads else f"{'':>9}"
            hits = [f"{m[key]:.3f} ({round(m[key] * n):>2})" for key in ("recall@1", f"recall@{TOP_K}")]
            print(f"{name:<34} {hits[0]:>11} {hits[1]:>11} {m['mrr']:6.3f} {m['median_rank']:12.0f} {spread}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": info, "passages": len(texts), "results": results,
                                               "mean_cosine": spreads}, indent=2))

if __name__ == "__main__":
    main()
