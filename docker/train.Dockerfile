# The training image: GPU TensorFlow, its CUDA libraries from PyPI (the host brings the driver).
# Build context: the repository root, after `make wheels` put the locked wheels in build/wheels/.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# Installs only the wheels fetched (hash-checked) from the lock on the host, so the build needs
# no network. The wheels are mounted, so they take no room in the image; the lock is copied, so
# a changed lock invalidates the cached layer (and stays in the image as its package list).
COPY docker/train.lock /opt/requirements.lock
RUN --mount=type=bind,source=build/wheels/train,target=/tmp/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        --require-hashes --only-binary=:all: -r /opt/requirements.lock
# `train --init imagenet` loads Keras' ImageNet ResNet-50 file from the Keras cache, so a run
# downloads nothing. The file is fetched on the host like the wheels (build/weights/); loading
# it here checks it against the hash in Keras (a wrong file makes Keras download, which fails
# offline). Keras reads its cache only from a folder it can write: the stage user owns it.
ENV KERAS_HOME=/opt/keras
RUN --mount=type=bind,source=build/weights,target=/tmp/weights \
    install -D -m 0644 -t /opt/keras/models \
        /tmp/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
    && /opt/venv/bin/python -c "import keras; \
        keras.applications.ResNet50(weights='imagenet', include_top=False)" \
    && chown -R 10001 /opt/keras
COPY image_segmentation/ /opt/app/image_segmentation/
RUN python3 -m compileall -q /opt/app \
    && useradd --uid 10001 --no-create-home --home-dir /tmp stage
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/app PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001
WORKDIR /tmp
# Kubeflow gives the whole command (python -m image_segmentation ... STAGE ...); alone, the
# image prints the stages.
CMD ["python", "-m", "image_segmentation"]
