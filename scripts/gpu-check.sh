#!/usr/bin/env bash
# Run ON THE GPU MACHINE (its python3 holds a CUDA torch), from the repository root, with .whl/ from
# scripts/gpu-wheels.sh carried along: the CUDA tests, then the GPU figures of docs/performance.md,
# each logged under $OUT (or gpu-results/). About 10 minutes on an H200; each part is capped so a
# stuck one cannot eat the rest.
#   device run: scripts/gpu-check.sh            (carry: .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

part() {  # part NAME SECONDS COMMAND...: run, log to $out/NAME.log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? ($(tail -1 "$out/$name.log"))" | tee -a "$out/summary.txt"
}
# 1. correctness on CUDA: graphs vs eager, seeded invariance, scores; the engine, parity and sampling tests
part tests 240 python3 -m pytest -q -x -p no:cacheprovider tests/cuda -m cuda \
  tests/unit/test_gpt2_parity.py tests/unit/test_engine.py tests/unit/test_static_decode.py tests/unit/test_prefix_reuse.py
# 2. GPT-2 small, bf16: graphs on and off against transformers' generate, one run
part engine 180 python3 bench/engine.py --device cuda --dtype bfloat16 --concurrency 32 256 --cuda-graphs auto off
# 3. the serving stack's own cost (tiny model, 64 and 256 sequences), engine only and through HTTP
part overhead 150 python3 bench/overhead.py --device cuda --sequences 64 256 --rounds 2
# 4. through HTTP vs the direct engine, GPT-2 small
part serving 150 python3 bench/serving.py --device cuda --concurrency 256 --new 128 --repeats 2
