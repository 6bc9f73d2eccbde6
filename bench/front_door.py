"""What the front door costs a well-behaved request: sequential requests against two servers started
side by side (this checkout and another one, e.g. main), alternating in rounds, medians per kind.

    python bench/front_door.py --model DIR --other /tmp/main [--rounds 5] [--requests 40]

Kinds: a 1-token completion (a small body, parsed in the API process), and /detokenize of 20,000
token ids (~120 KB: a large body, parsed in the body-parser process on this branch); API keys set.
Ratios are this checkout / the other, overall and per round (the order alternates by round).
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
    "/detokenize of 20k token ids (~120 KB body)": ("/detokenize", {"tokens": [(i * 7919) % 50000
                                                                          for i in range(20000)]}),
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
        for round_ in range(args.rounds):
            for name in (("this", "other") if round_ % 2 == 0 else ("other", "this")):  # (order alternates)
                url = servers[name][1]
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
        n = args.requests
        rounds = [statistics.median(times["this", kind][i * n:(i + 1) * n]) / statistics.median(
            times["other", kind][i * n:(i + 1) * n]) for i in range(args.rounds)]
        print(f"{kind}: median {this:.2f} ms (this) vs {other:.2f} ms (other): x{this / other:.2f} "
              f"(per round: {', '.join(f'x{r:.2f}' for r in rounds)})")


if __name__ == "__main__":
    main()
