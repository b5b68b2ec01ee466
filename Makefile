# Everything a developer or CI runs. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
WORK ?= work
# Test processes, each running whole modules (tests/conftest.py orders them).
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup lock test lint demo bench gpu-wheels clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-25s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) --require-hashes requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## Create .venv from requirements.lock

lock: ## Re-pin requirements.lock from requirements.in (needs the package index)
	$(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

test: setup ## Run the test suite
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup ## Run every stage locally on a generated ADE20K-layout dataset
	$(PY) -m image_segmentation demo --work-dir $(WORK)/demo

bench: setup ## Benchmarks (BENCH="bench_prepare ..." to pick); results in benchmarks/results/
	$(PY) -m benchmarks.run $(BENCH)

gpu-wheels: setup ## Fill benchmarks/gpu/wheels/ for benchmarks/gpu/run.sh (needs the index)
	benchmarks/gpu/fetch_wheels.sh $(PY)

clean: ## Remove generated work files (keeps .venv)
	rm -rf $(WORK) .pytest_cache .ruff_cache

# --- Containers and the Kubeflow pipeline on Vertex AI (docs/vertex.md) ----------------------
# Settings, e.g. `make images push pipeline-upload pipeline-run PROJECT=p REGION=europe-west4
# BUCKET=b SERVICE_ACCOUNT=sa@p.iam.gserviceaccount.com`. Targets check the ones they need.
PROJECT ?=
REGION ?=
BUCKET ?=
SERVICE_ACCOUNT ?=
DOCKER_REPOSITORY ?= image-segmentation
KFP_REPOSITORY ?= image-segmentation-pipelines
IMAGE_REGISTRY ?= $(if $(and $(PROJECT),$(REGION)),$(REGION)-docker.pkg.dev/$(PROJECT)/$(DOCKER_REPOSITORY))
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
CONTAINER_ENGINE ?= docker
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
IMAGES := $(patsubst docker/%.Dockerfile,%,$(wildcard docker/*.Dockerfile))
BUILD_REGISTRY = $(or $(IMAGE_REGISTRY),localhost)
image_name = $(1)/image-segmentation-$(2):$(TAG)
# The light image is also tagged by the content of what the download step runs, so Vertex's
# step cache keeps the 1 GB download across commits (components/images.py).
DOWNLOAD_TAG = $(shell $(PYTHON_BOOT) components/images.py)
download_image = $(1)/image-segmentation-light:$(DOWNLOAD_TAG)
image_tags = -t $(call image_name,$(1),$(2)) $(if $(filter light,$(2)),-t $(call download_image,$(1)))
PIPELINE_FILE ?= build/pipeline.yaml
PARAMS ?=
PARAMS_FILE ?=
# pipeline-run: the Vertex AI Experiment the run joins; pipeline-schedule: when (CRON="0 3 * * 1",
# optionally "TZ=Area/City 0 3 * * 1"); pipeline-schedule-*: which (SCHEDULE=ID, from the list)
EXPERIMENT ?=
CRON ?=
SCHEDULE ?=
STEP ?=
ARGS ?=
DATA ?= $(WORK)/data
PIPELINE_ROOT ?= $(WORK)/pipeline-local
# pipeline-local: no GPU here, so the export image (TensorFlow CPU) also trains
LOCAL_IMAGES ?= light export
WHEEL_PLATFORMS := manylinux2014_x86_64 $(foreach v,24 25 26 27 28 29 30 31 32 33 34 35 36,manylinux_2_$(v)_x86_64)
missing = $(strip $(foreach v,$(1),$(if $($(v)),,$(v))))
require = $(if $(call missing,$(1)),$(error $(call missing,$(1)) not set: make $@ $(foreach v,$(call missing,$(1)),$(v)=...)))
RUN_VARIABLES := PROJECT REGION BUCKET SERVICE_ACCOUNT
# Named all at once before any work, not one by one as each prerequisite asks for its own.
ifneq ($(filter pipeline-run,$(MAKECMDGOALS)),)
  ifneq ($(call missing,$(RUN_VARIABLES)),)
    $(error $(call missing,$(RUN_VARIABLES)) not set: make pipeline-run $(foreach v,$(call missing,$(RUN_VARIABLES)),$(v)=...))
  endif
endif
ifneq ($(filter pipeline-schedule,$(MAKECMDGOALS)),)
  ifneq ($(call missing,$(RUN_VARIABLES) CRON),)
    $(error $(call missing,$(RUN_VARIABLES) CRON) not set: make pipeline-schedule $(foreach v,$(call missing,$(RUN_VARIABLES) CRON),$(v)=...))
  endif
  # the client adds to an experiment only a run it submits itself, not a schedule's runs
  ifneq ($(EXPERIMENT),)
    $(error EXPERIMENT is for pipeline-run only: Vertex adds no scheduled run to an experiment)
  endif
endif
# BUCKET may be given as gs://NAME too
BUCKET_NAME = $(patsubst %/,%,$(patsubst gs://%,%,$(BUCKET)))
stage_of = $(if $(filter convert,$(1)),export,$(1))
image_of = $(if $(filter train,$(1)),train,$(if $(filter evaluate export convert,$(1)),export,light))
params = $(addprefix --param ,$(PARAMS)) $(if $(PARAMS_FILE),--params-file $(PARAMS_FILE))
# what a run needs, started now (pipeline-run) or by a schedule (pipeline-schedule)
job_options = --template $(PIPELINE_FILE) --project $(PROJECT) --region $(REGION) \
  --pipeline-root gs://$(BUCKET_NAME)/pipeline-root --service-account $(SERVICE_ACCOUNT) \
  --param destination=gs://$(BUCKET_NAME)/models $(params) --label image-tag=$(TAG)

.PHONY: lock-images wheels images push pipeline-compile pipeline-run pipeline-upload \
  run-component pipeline-local base-image pipeline-schedule pipeline-schedules \
  pipeline-schedule-pause pipeline-schedule-resume pipeline-schedule-delete

lock-images: ## Re-pin docker/*.lock from docker/*.in within requirements.lock (needs the index)
	for in in docker/*.in; do \
	  $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 -c requirements.lock $$in -o $${in%.in}.lock; \
	done

build/wheels/%/.complete: docker/%.lock | setup
	$(PY) -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
	  --ignore-requires-python --python-version 3.11 --implementation cp --abi cp311 \
	  $(addprefix --platform ,$(WHEEL_PLATFORMS)) -r $< -d $(@D)
	touch $@

wheels: $(foreach i,$(IMAGES),build/wheels/$(i)/.complete) ## Fetch the images' locked wheels

# Keras' ImageNet ResNet-50 (no top) for `train --init imagenet`, checked with the hash Keras
# itself checks; the train image carries it, so a run downloads nothing.
RESNET50_WEIGHTS := build/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
RESNET50_URL := https://storage.googleapis.com/tensorflow/keras-applications/resnet
RESNET50_MD5 := 4d473c1dd8becc155b73f8504c6f6626
$(RESNET50_WEIGHTS):
	mkdir -p $(@D)
	curl -fsSL -o $@.partial $(RESNET50_URL)/$(@F)
	echo "$(RESNET50_MD5)  $@.partial" | md5sum --check --quiet -
	mv $@.partial $@

image-train: $(RESNET50_WEIGHTS)

image-%: build/wheels/%/.complete
	$(CONTAINER_ENGINE) build --network=none -f docker/$*.Dockerfile \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) $(call image_tags,$(BUILD_REGISTRY),$*) .

images: $(addprefix image-,$(IMAGES)) ## Build the images (offline; IMAGE_REGISTRY or localhost)

push: ## Push the images to IMAGE_REGISTRY
	$(call require,IMAGE_REGISTRY)
	$(foreach i,$(IMAGES),$(CONTAINER_ENGINE) push $(call image_name,$(IMAGE_REGISTRY),$(i)) &&) true
	$(if $(filter light,$(IMAGES)),$(CONTAINER_ENGINE) push $(call download_image,$(IMAGE_REGISTRY)))

pipeline-compile: setup ## Write PIPELINE_FILE with IMAGE_REGISTRY and TAG baked in
	$(call require,IMAGE_REGISTRY TAG)
	$(PY) -m pipelines compile --image-registry $(IMAGE_REGISTRY) --tag $(TAG) \
	  --output $(PIPELINE_FILE)

pipeline-run: pipeline-compile ## Start a Vertex AI run (PARAMS="epochs=20 ...", PARAMS_FILE=x.json, EXPERIMENT=name)
	$(call require,$(RUN_VARIABLES))
	$(PY) -m pipelines run $(job_options) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

pipeline-schedule: pipeline-compile ## Schedule Vertex AI runs: CRON="0 3 * * 1", settings as pipeline-run
	$(call require,$(RUN_VARIABLES) CRON)
	$(PY) -m pipelines schedule create $(job_options) --cron '$(CRON)'

pipeline-schedules: setup ## List the region's Vertex AI pipeline schedules (PROJECT REGION)
	$(call require,PROJECT REGION)
	$(PY) -m pipelines schedule list --project $(PROJECT) --region $(REGION)

pipeline-schedule-pause pipeline-schedule-resume pipeline-schedule-delete: pipeline-schedule-%: setup
	$(call require,PROJECT REGION SCHEDULE)
	$(PY) -m pipelines schedule $* $(SCHEDULE) --project $(PROJECT) --region $(REGION)
pipeline-schedule-pause: ## Stop a schedule starting runs: SCHEDULE=ID (from pipeline-schedules)
pipeline-schedule-resume: ## Let a paused schedule start runs again: SCHEDULE=ID
pipeline-schedule-delete: ## Delete a schedule (its runs are kept): SCHEDULE=ID

pipeline-upload: pipeline-compile ## Publish the template to Artifact Registry (KFP_REPOSITORY)
	$(call require,PROJECT REGION)
	$(PY) -m pipelines upload --template $(PIPELINE_FILE) \
	  --host https://$(REGION)-kfp.pkg.dev/$(PROJECT)/$(KFP_REPOSITORY) --tag latest --tag $(TAG)

run-component: ## Run one stage's image on DATA mounted at /data: STEP=prepare ARGS="..."
	$(call require,STEP)
	mkdir -p $(DATA)
	$(CONTAINER_ENGINE) run --rm --network=host --user $$(id -u):$$(id -g) \
	  -v $(abspath $(DATA)):/data $(call image_name,$(BUILD_REGISTRY),$(call image_of,$(STEP))) \
	  python -m image_segmentation $(call stage_of,$(STEP)) $(ARGS)

# The template Vertex runs, through the emulator (pipelines/emulator/): the export image stands
# in for the GPU train image, which also has the ImageNet weights, so init is random by default.
pipeline-local: setup ## Run the Vertex template here, each step in its image (PARAMS="...")
	@command -v $(CONTAINER_ENGINE) >/dev/null || { echo "error: $(CONTAINER_ENGINE) not found:" \
	  "install docker or podman (then CONTAINER_ENGINE=podman)" >&2; exit 2; }
	$(MAKE) images IMAGE_REGISTRY=localhost IMAGES="$(LOCAL_IMAGES)"
	$(MAKE) pipeline-compile IMAGE_REGISTRY=localhost PIPELINE_FILE=$(PIPELINE_ROOT)/pipeline.yaml
	$(PY) -m pipelines local --template $(PIPELINE_ROOT)/pipeline.yaml \
	  --gcs-dir $(PIPELINE_ROOT)/gcs --engine $(CONTAINER_ENGINE) \
	  --substitute image-segmentation-train=image-segmentation-export --param init=random $(params)

base-image: ## Make BASE_IMAGE offline with debootstrap (root; for machines without a registry)
	docker/base-image.sh $(CONTAINER_ENGINE) $(BASE_IMAGE)
