# postprod on CPU: the Prefect server/orchestrator image of docker/compose.yaml, and a worker for
# machines without a GPU. Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t postprod-cpu:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The README's install: the CPU build of torch first (an unpinned torch makes pip fetch the CUDA
# build and several GB of CUDA libraries), then the project itself.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/postprod
COPY . /opt/postprod
# Every dependency at the version the tests ran with (docker/constraints.txt).
RUN pip install . -c docker/constraints.txt

# Deployments' entrypoints (flows/*.py) are run from this checkout (prefect.yaml's pull step).
ENV POSTPROD_ROOT=/opt/postprod
CMD ["prefect", "worker", "start", "--pool", "gpu", "--work-queue", "reels"]
