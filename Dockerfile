# syntax=docker/dockerfile:1
# s4d-serve image. CPU by default (torch from the PyTorch CPU index, no CUDA libraries):
#   docker build -t s4d-serve:cpu .
# ONNX Runtime backend too (`S4D_BACKEND=onnxruntime`; +~300 MB: onnxruntime, onnx, onnxscript
# and the torch exporter's dependencies):
#   docker build -t s4d-serve:cpu-onnx --build-arg EXTRAS=server,onnx .
# CUDA variant: PyPI's CUDA build of torch, which bundles the CUDA runtime libraries as wheels;
# only the host's NVIDIA driver (nvidia-container-toolkit) is needed:
#   docker build -t s4d-serve:cuda --build-arg TORCH_INDEX=https://pypi.org/simple \
#     --build-arg EXTRAS=server,gpu --build-arg RUNTIME_PACKAGES="gcc libc6-dev" .
# (RUNTIME_PACKAGES: Debian packages for the runtime stage. Triton, which the CUDA torch brings,
# builds its small CUDA launcher with a C compiler on first use; without one the keyword
# models' fused core logs why and the GEMM form serves, slower: bench/RESULTS.md.)
#   docker run --gpus all -p 8000:8000 -e S4D_DEVICE=cuda s4d-serve:cuda
# What the runtime stage carries: a virtualenv with the project installed (not editable) and
# its serving dependencies, and checkpoints/. No compiler, no pip, no tests, no bytecode caches.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=server
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index, in a layer of its own: the largest and most stable one
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md s4d_cli.py ./
COPY model/ model/
COPY server/ server/
COPY clients/ clients/
COPY bench/ bench/
RUN pip install "./[${EXTRAS}]"
# Trim what serving never loads (measured: see README "Deploy"):
# - torch's C++ headers, CMake files, test binaries and test libraries (cpp extensions only);
# - unless the ONNX exporter is in (EXTRAS onnx / gpu): sympy, mpmath, networkx, jinja2, which
#   torch needs only for torch.compile / torch.export, never for eager inference;
# - pip and setuptools (the runtime installs nothing) and every __pycache__.
# Then prove the server still imports and a model still runs a batch and a streamed frame.
RUN set -eu; \
    site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/torch/include" "$site/torch/share" "$site/torch/test"; \
    find "$site/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +; \
    rm -f "$site"/torch/lib/lib*test*.so "$site/torch/lib/libbackend_with_compiler.so" \
          "$site/torch/lib/libaoti_custom_ops.so"; \
    case ",${EXTRAS}," in \
      *,onnx,*|*,gpu,*) ;; \
      *) pip uninstall -q -y sympy mpmath networkx jinja2 MarkupSafe ;; \
    esac; \
    pip uninstall -q -y pip setuptools; \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +; \
    python -c "import s4d_cli, server.app, server.cli"
COPY checkpoints/ /checkpoints/
RUN python -c "from pathlib import Path; from server.backends import get_backend; \
ckpt = sorted(Path('/checkpoints').glob('*/config.json'))[0].parent; \
get_backend('torch').load(ckpt, 'cpu').warmup(); print('warm-up forward ok:', ckpt.name)" \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
ARG RUNTIME_PACKAGES=""
ENV PATH=/opt/venv/bin:$PATH \
    TRITON_CACHE_DIR=/home/s4d/.cache/triton \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S4D_HOST=0.0.0.0 \
    S4D_PORT=8000 \
    S4D_CHECKPOINTS=/app/checkpoints \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 s4d \
    && useradd --system --uid 10001 --gid s4d --create-home --home-dir /home/s4d s4d
# the packages are the builder's choice (a build argument), so their versions are too
# hadolint ignore=DL3008
RUN if [ -n "${RUNTIME_PACKAGES}" ]; then \
      apt-get update && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 checkpoints/ /app/checkpoints/
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('S4D_PORT', '8000')}/healthz\", timeout=4)"]
ENTRYPOINT ["s4d"]
CMD ["serve"]
