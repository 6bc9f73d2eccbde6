#!/usr/bin/env bash
# The worked example of docs/training.md, end to end (`make demo`):
#   1. the King James Bible from Debian's bible-kjv-text, split into training and held-out chapters;
#   2. train a small GPT-2 from scratch on it with `gpt2-serve train` (about 15 minutes on 2 CPU cores);
#   3. serve the result, print a greedy and a sampled completion, stop the server.
#
# Settings (environment): DEMO_DIR (where the corpus and the model go; default
# ~/.cache/gpt2-serve/demo), DEMO_BUDGET (training time budget, default 14m), DEMO_STEPS,
# DEMO_PORT (default: a free port), PYTHON / GPT2_SERVE (default: the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gpt2-serve/demo}
DEMO_BUDGET=${DEMO_BUDGET:-14m}
DEMO_STEPS=${DEMO_STEPS:-1000}
PYTHON=${PYTHON:-.venv/bin/python}
GPT2_SERVE=${GPT2_SERVE:-.venv/bin/gpt2-serve}
CORPUS=$DEMO_DIR/demo-corpus
MODEL=$DEMO_DIR/demo-model
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== 1. corpus: the King James Bible (Debian package bible-kjv-text) -> $CORPUS"
if ! command -v bible >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y -qq bible-kjv >/dev/null || { apt-get update -qq && apt-get install -y -qq bible-kjv >/dev/null; }
    else
        echo "the bible program is missing: sudo apt-get install bible-kjv" >&2
        exit 1
    fi
fi
"$PYTHON" scripts/demo_corpus.py "$CORPUS"

echo "== 2. train a 4-layer GPT-2 from scratch (budget $DEMO_BUDGET; load now: $(cut -d' ' -f1-3 /proc/loadavg))"
"$GPT2_SERVE" train "$CORPUS/train.jsonl" --eval-data "$CORPUS/eval.jsonl" -o "$MODEL" --overwrite \
    --n-layer 4 --n-embd 128 --n-head 4 --context 256 --block-size 256 \
    --batch-size 4 --lr 3e-3 --warmup 50 --weight-decay 0.1 --max-steps "$DEMO_STEPS" \
    --time-budget "$DEMO_BUDGET" --eval-every 100 --eval-batches 16 --precision bf16 --seed 1

echo "== 3. serve it and complete two prompts (greedy, greedy with a repetition penalty, sampled)"
port=${DEMO_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
GPT2_MODEL=$MODEL GPT2_HOST=127.0.0.1 GPT2_PORT=$port GPT2_LOG_LEVEL=WARNING "$GPT2_SERVE" serve &
server=$!
stop_server() { kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.5
done
"$PYTHON" - "$port" <<'EOF'
import sys

import httpx

url = f"http://127.0.0.1:{sys.argv[1]}/v1/completions"
# greedy decoding of a model this small falls into loops; a repetition penalty (still greedy) and
# sampling show what it learned
for prompt, knobs, kind in [
        ("And the king said unto", {"temperature": 0}, "greedy"),
        ("And the king said unto", {"temperature": 0, "repetition_penalty": 1.3}, "greedy, repetition_penalty 1.3"),
        ("In the morning they went", {"temperature": 0.8, "top_p": 0.95, "seed": 1},
         "sampled: temperature 0.8, top_p 0.95, seed 1")]:
    reply = httpx.post(url, json={"prompt": prompt, "max_tokens": 40, **knobs}, timeout=120).json()
    print(f"--- {kind}\n{prompt}{reply['choices'][0]['text']}\n")
EOF
stop_server
echo "== done: model in $MODEL (card: README.md, curves: loss.png, figures: summary.json)"
