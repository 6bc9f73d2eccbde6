"""The attacks of issue 19 against a real server, with their harm measured (tests/reliability/attacks.py):
each answer's time and size, the server's memory (all its processes), /healthz latency over the
attack, and a normal request's latency next to its quiet time.

    python bench/attacks.py --model DIR [--code DIR] [--seconds S] [--only SUBSTRING] [--flood] [--json OUT]

--model: a GPT-2 directory (e.g. the tests' tiny model; `python bench/attacks.py --tiny` makes one).
--code: run the server from this checkout instead (e.g. `git archive main | tar -x -C /tmp/main`):
the same attacks and measurements, before and after, in one run. One fresh server per group of
cases (with and without API keys). --flood: every client sends back to back (no pause between
rounds): a request-rate flood, which cheap refusals on one event loop cannot absorb.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.reliability.attacks as attacks  # noqa: E402
from tests.reliability.attacks import (  # noqa: E402
    CASES,
    KEYED_SERVER,
    NORMAL_KEY,
    SERVER,
    measure,
    run_server,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GPT-2 directory the server loads")
    parser.add_argument("--tiny", action="store_true", help="make the tests' tiny random GPT-2 and use it")
    parser.add_argument("--code", help="checkout whose app/ the server runs (default: this one)")
    parser.add_argument("--seconds", type=float, help="each attack's duration (default: the case's)")
    parser.add_argument("--only", help="run the cases whose name holds this")
    parser.add_argument("--flood", action="store_true", help="no pause between a client's requests")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.flood:
        attacks.ROUND = 0.0
    model = args.model
    if args.tiny:
        model = make_tiny(Path(tempfile.mkdtemp(prefix="gpt2-tiny-")))
    results = {}
    for keyed in (False, True):
        cases = [c for c in CASES if c.keyed == keyed and (not args.only or args.only in c.name)]
        if not cases:
            continue
        proc, url = run_server({**(KEYED_SERVER if keyed else SERVER), "GPT2_MODEL": model}, args.code)
        try:
            for case in cases:
                figures = measure(url, proc.pid, case.build(url), args.seconds or case.seconds, case.clients,
                                  headers=NORMAL_KEY if keyed else None)
                results[case.name] = figures
                print(f"{case.name}\n  {json.dumps(figures)}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def make_tiny(path: Path) -> str:
    import shutil

    from app.model.loader import PACKAGED_TOKENIZER
    from tests.conftest import make_hf_model

    make_hf_model().save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PACKAGED_TOKENIZER / name, path / name)
    return str(path)


if __name__ == "__main__":
    main()
