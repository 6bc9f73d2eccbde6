#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before scripts/gpu-check.sh: downloads into .whl/ the wheels the
# GPU machine's image lacks (it has torch, transformers, numpy, httpx, prometheus-client, typer,
# pytest; no network). Python 3.12, x86-64 manylinux. .whl/ is git-ignored; carry it to the device.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$tag"); done
rm -rf .whl
# the service's needs that the image lacks, and the test suite's (openai), with what they need in turn,
# resolved together (one version of each)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  "fastapi>=0.115,<1" "pydantic-settings>=2.3,<3" "uvicorn>=0.30,<1" httptools "pyzmq>=26,<28" "msgspec>=0.19,<1" \
  "orjson>=3.10,<4" "openai>=1.40,<4"
du -sh .whl
