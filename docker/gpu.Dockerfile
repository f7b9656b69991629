# postprod GPU worker: pulls shots from the `gpu` work pool. Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t postprod-gpu:0.1.0 .
# Run with the host's GPUs and the shared storage (see docker/compose.yaml, docs/operators.md):
#   docker run --gpus all -v /mnt/postprod:/mnt/postprod -e PREFECT_API_URL=http://server:4200/api postprod-gpu:0.1.0
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# The CUDA build of torch that matches the base image's CUDA (its wheels bring their own CUDA
# libraries; the base image gives the runtime and the NVIDIA container environment).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (the version postprod is tested with; Ubuntu 24.04 ships 3.12) in a virtualenv
# with pip, made by uv from a standalone CPython build.
COPY --from=ghcr.io/astral-sh/uv:0.8.22 /uv /usr/local/bin/uv
RUN uv venv --seed --python 3.11 /opt/venv && rm -rf /root/.cache/uv

# The README's install: torch pinned first (here its CUDA build), then the project itself.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}

WORKDIR /opt/postprod
# The weights ship in the repository (model/weights/*.pt): copied with it, and installed as
# package data by `pip install .`, so the image needs no download at run time.
COPY . /opt/postprod
# Every dependency at the version the tests ran with (docker/constraints.txt).
RUN pip install . -c docker/constraints.txt

ENV POSTPROD_ROOT=/opt/postprod
# The default command, not an ENTRYPOINT: a docker work pool runs this same image with its own
# command (`prefect flow-run execute`), which an ENTRYPOINT would prefix.
CMD ["prefect", "worker", "start", "--pool", "gpu", "--work-queue", "shots", "--limit", "1"]
