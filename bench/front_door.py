"""What the front door costs a well-behaved request: sequential requests against two servers started
side by side (this checkout and another one, e.g. main), alternating in rounds, medians per kind.

    python bench/front_door.py --model DIR --other /tmp/main [--rounds 5] [--requests 40]

Kinds: a 1-token completion (small body, parsed in the API process), and /v1/score of 20,000 token
ids (~120 KB: a large body, parsed in the body-parser process on this branch), with and without
API keys checked. Ratios are this checkout / the other.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.attacks import run_server  # noqa: E402

KINDS = {
    "completion, 1 token": ("/v1/completions", {"prompt": "Hello there", "max_tokens": 1, "temperature": 0}),
    "score, 20k token ids (~120 KB body)": ("/v1/score", {"input": [(i * 7919) % 50000 for i in range(20000)],
                                                         "window": "sliding", "detect": False,
                                                         "return_tokens": False}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--other", required=True, help="the other checkout (its app/ is served)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40, help="per kind per round")
    args = parser.parse_args()
    env = {"GPT2_MODEL": args.model, "GPT2_API_KEYS": "k1,k2", "GPT2_MAX_REQUEST_SHARE": "1"}
    servers = {"this": run_server(env), "other": run_server(env, args.other)}
    times: dict = {(name, kind): [] for name in servers for kind in KINDS}
    try:
        for _ in range(args.rounds):
            for name, (_, url) in servers.items():
                with httpx.Client(base_url=url, timeout=120, headers={"Authorization": "Bearer k2"}) as http:
                    for kind, (path, body) in KINDS.items():
                        content = json.dumps(body).encode()
                        for _ in range(args.requests):
                            start = time.perf_counter()
                            response = http.post(path, content=content, headers={"Content-Type": "application/json"})
                            times[name, kind].append(time.perf_counter() - start)
                            assert response.status_code == 200, response.text[:300]
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    for kind in KINDS:
        this, other = (statistics.median(times[name, kind]) * 1e3 for name in ("this", "other"))
        print(f"{kind}: median {this:.2f} ms (this) vs {other:.2f} ms (other): x{this / other:.2f}")


if __name__ == "__main__":
    main()
