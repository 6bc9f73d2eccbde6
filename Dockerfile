# gpt2-serve container image. BuildKit (Docker >= 23 default) is assumed: it builds only the
# stages the chosen target needs, which is what makes the VARIANT / BAKE_MODEL switches cheap.
# No `# syntax=` line on purpose: the built-in frontend has every feature used here, and pulling
# docker/dockerfile would break builds on hosts that cannot reach Docker Hub.
#
#   docker build -t gpt2-serve:cuda .                               # GPU image (default)
#   docker build -t gpt2-serve:cpu --build-arg VARIANT=cpu .        # CPU-only image
#   docker build -t gpt2-serve:gpt2-medium-cuda --build-arg BAKE_MODEL=gpt2-medium .
#                                                                   # weights baked in, offline
#
# Why python:3.11-slim for BOTH variants instead of an nvidia/cuda base: the CUDA build of the
# torch wheel already carries the CUDA runtime, cuBLAS, cuDNN and NCCL (as nvidia-* wheels);
# the only thing a GPU container needs from outside is the host's driver, which the NVIDIA
# Container Toolkit mounts in at run time. An nvidia/cuda:*-runtime base would ship a second
# copy of those libraries (several GB) and an Ubuntu Python that is not 3.11.
# See docs/deploy.md for the build arguments and how to run the image.

# Python base shared by every stage; override to pin a digest in your registry mirror.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# cuda | cpu: which torch build goes into the image.
ARG VARIANT=cuda
# A GPT2_MODEL value (hub id such as gpt2-medium) to download at build time; empty = none.
ARG BAKE_MODEL=""

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------
# torch goes in first and alone, so its (huge) layer is cached across source changes.
FROM python-base AS torch-cpu
ARG TORCH_VERSION=2.13.0
# The CPU index serves the CPU-only build; PyPI's default Linux x86_64 wheel is the CUDA build
# and would drag ~3 GB of nvidia-* wheels into an image that can never use them.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

FROM python-base AS torch-cuda
ARG TORCH_VERSION=2.13.0
# The CUDA 12.8 build of torch (bundles its CUDA libraries). Hosts need an NVIDIA driver that
# supports CUDA 12.8 (R570+, or R525+ through CUDA minor-version compatibility). Point this at
# another index (e.g. .../whl/cu126) for older drivers.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# ---------------------------------------------------------------------------------------------
# The application into the same venv; its dependencies come from PyPI within pyproject's ranges.
# pip keeps the torch already installed because it satisfies pyproject's range.
# DL3006 (untagged image) is a false positive on the stage-name FROMs below: hadolint does not
# expand ${VARIANT} to the local stages torch-cpu/torch-cuda, runtime-cpu/runtime-cuda.
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS builder
# EXTRAS=train adds `gpt2-serve train` / `train-detector` (datasets, accelerate, ...): the image the
# Kubernetes training Job runs (deploy/k8s/train-job.yaml); the serving image needs none of it.
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
# DL3013 (pin pip versions) does not apply: this installs the project itself, whose dependencies
# are pinned to ranges in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
    && python -c "import app, torch; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------
# Optional: weights of BAKE_MODEL, fetched with the service's own downloader. The stage is only
# built when BAKE_MODEL is set (see the last FROM); the guard keeps a non-BuildKit build working.
FROM builder AS weights
ARG BAKE_MODEL
ENV HF_HOME=/tmp/hf-home \
    HF_HUB_CACHE=/opt/gpt2-serve/hub
RUN mkdir -p /opt/gpt2-serve/hub \
    && if [ -n "${BAKE_MODEL}" ]; then GPT2_MODEL="${BAKE_MODEL}" gpt2-serve download; fi \
    && chmod -R a+rX /opt/gpt2-serve

# ---------------------------------------------------------------------------------------------
# Runtime: no compilers, no pip cache, no source tree; only the venv and a non-root user.
FROM python-base AS runtime-cpu

FROM python-base AS runtime-cuda
# The toolkit mounts the driver's compute libraries (and nvidia-smi) only when asked. Devices are
# deliberately NOT set here (no NVIDIA_VISIBLE_DEVICES=all): the GPU must be requested by
# `--gpus`, compose's device reservation or the Kubernetes device plugin, never inherited.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS serve
ARG VARIANT
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 gpt2 \
    && useradd --system --uid 10001 --gid gpt2 --home-dir /home/gpt2 --create-home \
       --shell /usr/sbin/nologin gpt2 \
    && mkdir -p /cache/huggingface \
    && chown -R 10001:10001 /cache
COPY --from=builder /opt/venv /opt/venv

# HF_HOME is the model cache; mount a volume here so weights survive container restarts (an
# empty named Docker volume is first filled from, and owned like, this directory).
# GPT2_HOST must be 0.0.0.0 in a container: the default 127.0.0.1 is unreachable from outside.
ENV HF_HOME=/cache/huggingface \
    GPT2_HOST=0.0.0.0 \
    GPT2_PORT=8000 \
    GPT2_LOG_FORMAT=json
VOLUME ["/cache/huggingface"]

LABEL org.opencontainers.image.title="gpt2-serve" \
      org.opencontainers.image.description="GPT-2 text generation and scoring service (${VARIANT})" \
      org.opencontainers.image.licenses="MIT" \
      io.github.gpt2-serve.variant="${VARIANT}"

USER 10001:10001
WORKDIR /home/gpt2
EXPOSE 8000

# Liveness only (/healthz answers 200 while the process runs); traffic gating is /readyz's job
# (load balancers, Kubernetes readinessProbe). Python's urllib: no curl in the image. The start
# period covers a cold start that downloads and warms a model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GPT2_PORT', '8000'), timeout=4)"]

# Exec form: the gpt2-serve process is PID 1 and receives SIGTERM itself, so it can drain
# (readyz -> 503, finish in-flight requests within GPT2_DRAIN_TIMEOUT, exit 0). Give it time:
# `docker stop -t 45` / compose stop_grace_period (Docker's default is only 10 s).
# The server spawns no child processes, so there are no zombies to reap and no init is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gpt2-serve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
FROM serve AS serve-baked
COPY --from=weights /opt/gpt2-serve/hub /opt/gpt2-serve/hub
ARG BAKE_MODEL
# The baked hub cache lives OUTSIDE the /cache volume so that mounting a volume (or a Kubernetes
# emptyDir) at /cache/huggingface cannot hide it; it is read-only and owned by root.
ENV HF_HUB_CACHE=/opt/gpt2-serve/hub \
    HF_HUB_OFFLINE=1 \
    GPT2_MODEL=${BAKE_MODEL}

# Final target: "serve" without BAKE_MODEL, "serve-baked" with it (${X:+word} expands to word
# only when X is set and non-empty).
# hadolint ignore=DL3006
FROM serve${BAKE_MODEL:+-baked} AS final
