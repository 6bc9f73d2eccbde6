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
pip_download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$@"
}
# the service's own needs beyond the image, then the test suite's
pip_download fastapi starlette pydantic pydantic-core annotated-types typing-inspection pydantic-settings \
  python-dotenv uvicorn httptools pyzmq msgspec orjson openai distro jiter sniffio
du -sh .whl
