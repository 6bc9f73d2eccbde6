#!/usr/bin/env bash
# tokens/s of `gpt2-serve train` in one process against torchrun with 2 processes, on the same
# global batch (8 blocks of 256 tokens a step) and the worked example's model and corpus
# (run `make demo` first, or set CORPUS). One process, two processes, one process again (the
# machine's load may drift). Prints each run's closing line; docs/training.md ("Figures").
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-${DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gpt2-serve/demo}/demo-corpus}
STEPS=${STEPS:-25}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
head -3 "$CORPUS/eval.jsonl" >"$OUT/eval.jsonl"  # a small held-out set: the figure is the training speed
args=("$CORPUS/train.jsonl" --eval-data "$OUT/eval.jsonl" --n-layer 4 --n-embd 128 --n-head 4 --context 256
      --lr 3e-3 --max-steps "$STEPS" --eval-every 1000 --precision fp32 --seed 1)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for run in 1 2 1-again; do
    echo "== $run process(es); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ $run == 2 ]]; then
        GLOO_SOCKET_IFNAME=lo .venv/bin/torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port="$port" \
            --no-python .venv/bin/gpt2-serve train "${args[@]}" -o "$OUT/$run" --batch-size 4
    else
        .venv/bin/gpt2-serve train "${args[@]}" -o "$OUT/$run" --batch-size 8
    fi 2>&1 | tr '\r' '\n' | grep '^done'
done
