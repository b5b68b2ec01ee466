# The export image: TensorFlow (CPU), coremltools and LiteRT for Core ML and TFLite; also what
# trains on machines without a GPU (make pipeline-local).
# Build context: the repository root, after `make wheels` put the locked wheels in build/wheels/.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# backports-strenum (needed by ai-edge-litert) declares Python <3.11 but works on 3.11; uv, which
# wrote the lock, ignores such upper bounds, and pip needs --ignore-requires-python for it.
# Installs only the wheels fetched (hash-checked) from the lock on the host, so the build needs
# no network. The wheels are mounted, so they take no room in the image; the lock is copied, so
# a changed lock invalidates the cached layer (and stays in the image as its package list).
COPY docker/export.lock /opt/requirements.lock
RUN --mount=type=bind,source=build/wheels/export,target=/tmp/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        --require-hashes --only-binary=:all: --ignore-requires-python -r /opt/requirements.lock
COPY image_segmentation/ /opt/app/image_segmentation/
RUN python3 -m compileall -q /opt/app \
    && useradd --uid 10001 --no-create-home --home-dir /tmp stage
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/app PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001
WORKDIR /tmp
# Kubeflow gives the whole command (python -m image_segmentation ... STAGE ...); alone, the
# image prints the stages.
CMD ["python", "-m", "image_segmentation"]
