# syntax=docker/dockerfile:1
# s4d-serve image. CPU by default (torch from the PyTorch CPU index, ~200 MB instead of GBs):
#   docker build -t s4d-serve:cpu .
# CUDA variant: the same slim base with PyPI's CUDA build of torch, which bundles the CUDA
# runtime libraries as wheels; only the host's NVIDIA driver (nvidia-container-toolkit) is needed:
#   docker build -t s4d-serve:cuda --build-arg TORCH_INDEX=https://pypi.org/simple \
#     --build-arg EXTRAS=server,gpu .
#   docker run --gpus all -p 8000:8000 -e S4D_DEVICE=cuda s4d-serve:cuda

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=server,onnx
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index, in a layer of its own: the largest and most stable one
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /app
COPY pyproject.toml README.md s4d_cli.py ./
COPY model/ model/
COPY server/ server/
COPY clients/ clients/
COPY bench/ bench/
# editable, as `make serve` does: the code (and server/static/) is served from /app
RUN pip install -e ".[${EXTRAS}]" \
    && python -c "import s4d_cli, server.cli"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S4D_HOST=0.0.0.0 \
    S4D_PORT=8000 \
    S4D_CHECKPOINTS=/app/checkpoints \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 s4d \
    && useradd --system --uid 10001 --gid s4d --create-home --home-dir /home/s4d s4d
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --chown=10001:10001 checkpoints/ /app/checkpoints/
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('S4D_PORT', '8000')}/healthz\", timeout=4)"]
ENTRYPOINT ["s4d"]
CMD ["serve"]
