"""The training pipeline: download -> prepare -> train (GPU) -> evaluate -> challenge -> convert
-> upload.

Convert and upload run only when the challenge step says publish: the evaluated mIoU reaches
`min_miou` (the absolute floor) and beats the champion of DESTINATION/MODEL_NAME/ (named by its
champion.json) by at least `min_improvement` on the same validation data; upload then makes
the new version the champion. Otherwise a small step logs which rule stopped the run and by
how much, and the run still succeeds.

Training runs as a Vertex AI CustomJob (pipelines/training.py). There is one template: `make
pipeline-local` runs the same one on this machine through the Vertex emulator
(pipelines/emulator/).

Every knob is a pipeline parameter with a default, and its description comes from the `Args:`
section of the pipeline's docstring, which kfp compiles into the template: the Vertex console
shows them in its run form. The defaults are the legacy README's living-room example.
"""

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Model, graph_component

from components import (
    Images,
    challenge_component,
    convert_component,
    download_component,
    evaluate_component,
    not_published_component,
    prepare_component,
    upload_component,
)
from image_segmentation.data import ade20k, labels
from image_segmentation.data import prepare as preparation
from image_segmentation.training.settings import TrainSettings
from pipelines import training

PIPELINE_NAME = "image-segmentation"
TRAIN = TrainSettings()  # the pipeline trains with the train stage's defaults unless it says
JOB_NAME = dsl.PIPELINE_JOB_NAME_PLACEHOLDER  # e.g. image-segmentation-20261123120000


def publish(
    upload, exported, model, evaluation, challenge, destination, model_name, version
) -> dsl.PipelineTask:
    """The upload step; never cached, since every run publishes its own version."""
    task = upload(
        exported=exported,
        model=model,
        evaluation=evaluation,
        challenge=challenge,
        destination=destination,
        model_name=model_name,
        version=version,
    )
    return task.set_caching_options(False)


def build_pipeline(images: Images) -> graph_component.GraphComponent:
    """The pipeline with its steps running on `images`."""
    download = download_component(images)
    prepare = prepare_component(images)
    evaluate = evaluate_component(images)
    challenge = challenge_component(images)
    not_published = not_published_component(images)
    convert = convert_component(images)
    upload = upload_component(images)

    # The compiler does not pass a parameter that only sets a step's resources into a condition
    # (the challenge's gate), so convert runs inside this small pipeline, whose inputs reach it.
    @dsl.pipeline(name="convert-with-resources")
    def convert_with_resources(
        model: Input[Model],
        evaluation: Input[Artifact],
        data: Input[Dataset],
        max_miou_drop: float,
        quality_images: int,
        cpu: str,
        memory: str,
    ) -> Model:
        converted = convert(
            model=model,
            evaluation=evaluation,
            data=data,
            max_miou_drop=max_miou_drop,
            quality_images=quality_images,
        )
        converted.set_cpu_limit(cpu).set_memory_limit(memory)
        return converted.outputs["exported"]

    @dsl.pipeline(name=PIPELINE_NAME)
    def image_segmentation(
        destination: str,
        model_name: str = "icnet-living-room",
        model_version: str = "",
        source_url: str = ade20k.OFFICIAL_URL,
        source_sha1: str = ade20k.OFFICIAL_SHA1,
        whitelist: str = labels.LIVING_ROOM_WHITELIST,
        threshold: float = preparation.DEFAULT_THRESHOLD,
        train_shards: int = preparation.DEFAULT_TRAIN_SHARDS,
        val_shards: int = preparation.DEFAULT_VAL_SHARDS,
        image_size: int = TRAIN.image_size[0],
        alpha: float = TRAIN.alpha,
        epochs: int = TRAIN.epochs,
        steps_per_epoch: int = 200,
        batch_size: int = TRAIN.batch_size,
        # The train stage's default rate was chosen from random weights; from ImageNet's, the
        # pipeline keeps the gentler earlier one.
        learning_rate: float = 0.003,
        init: str = "imagenet",  # the train stage's default is random: no file to fetch
        resize: str = TRAIN.resize,
        machine_type: str = "g2-standard-8",
        accelerator_type: str = "NVIDIA_L4",
        accelerator_count: int = 1,
        replica_count: int = 1,
        scheduling_strategy: str = "STANDARD",
        tensorboard: str = "",
        train_timeout: str = "172800s",
        prepare_cpu: str = "8",
        prepare_memory: str = "16G",
        evaluate_cpu: str = "8",
        evaluate_memory: str = "32G",
        convert_cpu: str = "4",
        convert_memory: str = "16G",
        max_miou_drop: float = -1.0,
        quality_images: int = 200,
        min_miou: float = 0.0,
        min_improvement: float = 0.0,
        replace_champion: bool = False,
    ):
        """Train ICNet on a whitelisted subset of ADE20K and publish it as Core ML and TFLite.

        Args:
            destination: Where models are published, gs://BUCKET/PREFIX; each run writes
                DESTINATION/MODEL_NAME/VERSION/ with a manifest.json.
            model_name: Model folder under the destination.
            model_version: Version folder; empty: this run's job name.
            source_url: ADEChallengeData2016.zip: the official http URL, a gs:// mirror (the
                MIT server is slow) or a path.
            source_sha1: Expected SHA-1 of the zip; 'none' skips the check.
            whitelist: Output classes separated by '|', ADE20K classes merged into one by ':'
                (names from objectInfo150.txt); empty: all 150 classes.
            threshold: Keep an image when at least this fraction of the whitelisted classes
                appear in it (0-1).
            train_shards: TFRecord files for the training split.
            val_shards: TFRecord files for the validation split.
            image_size: Training and model input size in pixels (square, a multiple of 32).
            alpha: ICNet width multiplier: every filter count is scaled by it.
            epochs: Training epochs.
            steps_per_epoch: Batches per epoch (the legacy 1,600 images at batch size 8).
            batch_size: Images per training batch on each GPU; the global batch is this
                times the number of GPUs on all machines.
            learning_rate: Initial Adam learning rate for one GPU; it is multiplied by the
                number of GPUs on all machines, as the global batch grows with them.
            init: How the weights start: imagenet (the residual stages from ImageNet
                ResNet-50, pruned to ICNet's widths; the train image carries the file),
                random, or a gs:// ResNet-50 weights file. Run once with each to measure the
                gain on your data.
            resize: How photos become the model input, for training, evaluation and the
                apps: stretch (whole photo, aspect not kept; Vision scaleFill) or crop
                (centred window; Vision centerCrop).
            machine_type: Machine of the training job; it fixes the GPUs it can carry, e.g.
                g2-standard-8 (1 L4), g2-standard-24 (2 L4), n1-standard-8 (1-4 T4),
                a2-highgpu-1g (1 A100), a3-highgpu-1g (1 H100).
            accelerator_type: GPU of the training job, e.g. NVIDIA_L4, NVIDIA_TESLA_T4,
                NVIDIA_TESLA_A100, NVIDIA_H100_80GB; it must fit the machine type.
            accelerator_count: GPUs per training machine; it must fit the machine type.
            replica_count: Training machines; more than 1 trains on all of them
                (data parallel), the first one writes the model.
            scheduling_strategy: How the training machines are obtained: STANDARD (on
                demand), SPOT (cheaper; a preempted job is retried and resumes after its last
                completed epoch) or FLEX_START (waits for capacity, up to a day).
            tensorboard: Optional Vertex AI TensorBoard instance that receives the training
                scalars, projects/PROJECT/locations/REGION/tensorboards/ID; empty: none
                (the scalars are in the model folder's logs/ either way).
            train_timeout: Longest the training job may run, in seconds with an s, e.g.
                172800s (two days).
            prepare_cpu: vCPUs of the prepare step (one worker process per vCPU).
            prepare_memory: Memory of the prepare step, e.g. 16G.
            evaluate_cpu: vCPUs of the evaluate step.
            evaluate_memory: Memory of the evaluate step, e.g. 32G.
            convert_cpu: vCPUs of the convert step.
            convert_memory: Memory of the convert step, e.g. 16G.
            max_miou_drop: Publish the smallest Core ML weight compression (palettized,
                quantized, pruned) whose mean IoU, measured on the weights the file holds, is
                within this of the FP32 model's, e.g. 0.01 for one point; negative: float16
                weights, not compressed.
            quality_images: Validation images the convert step scores the Core ML file's own
                weights on (each compression it tries with max_miou_drop); 0: all of them.
            min_miou: Quality gate (0-1): the model is converted and published only when its
                mean IoU on the validation split is at least this; 0 lets every model on to
                the champion comparison. ADE20K benchmark convention: class 0 'none' (the
                classes not on the whitelist) is scored like the others,
                unlabelled pixels are not.
            min_improvement: How much the mean IoU must beat the champion's (the version
                DESTINATION/MODEL_NAME/champion.json names) by, on the same validation data,
                to be published and become the champion; 0: at least equal. The first model
                that reaches min_miou becomes the champion.
            replace_champion: Publish, and make champion, a model whose labels differ from
                the champion's, which no mean IoU can be compared with.
        """
        downloaded = download(source=source_url, sha1=source_sha1)
        prepared = prepare(
            dataset=downloaded.outputs["dataset"],
            whitelist=whitelist,
            threshold=threshold,
            train_shards=train_shards,
            val_shards=val_shards,
        )
        prepared.set_cpu_limit(prepare_cpu).set_memory_limit(prepare_memory)
        trained, job = training.train_on_vertex(
            images,
            prepared.outputs["prepared"],
            settings={
                "image_size": image_size,
                "alpha": alpha,
                "epochs": epochs,
                "steps_per_epoch": steps_per_epoch,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "init": init,
                "resize": resize,
            },
            machines={
                "machine_type": machine_type,
                "accelerator_type": accelerator_type,
                "accelerator_count": accelerator_count,
                "replica_count": replica_count,
                "scheduling_strategy": scheduling_strategy,
            },
            job_settings={"tensorboard": tensorboard, "timeout": train_timeout},
        )
        model = trained.outputs["model"]
        evaluated = evaluate(data=prepared.outputs["prepared"], model=model).after(job)
        evaluated.set_cpu_limit(evaluate_cpu).set_memory_limit(evaluate_memory)
        challenged = challenge(
            evaluation=evaluated.outputs["evaluation"],
            data=prepared.outputs["prepared"],
            destination=destination,
            model_name=model_name,
            min_miou=min_miou,
            min_improvement=min_improvement,
            replace_champion=replace_champion,
        )
        challenged.set_caching_options(False)  # the champion changes between runs
        with dsl.If(challenged.outputs["publish"] == "true", name="quality-gate"):
            evaluation = evaluated.outputs["evaluation"]
            decision = challenged.outputs["decision"]
            exported = convert_with_resources(
                model=model,
                evaluation=evaluation,
                data=prepared.outputs["prepared"],
                max_miou_drop=max_miou_drop,
                quality_images=quality_images,
                cpu=convert_cpu,
                memory=convert_memory,
            ).output
            # Vertex does not resolve IfPresent placeholders (googleapis/python-aiplatform#4164),
            # so the default version is chosen here: one of the two upload tasks runs.
            with dsl.If(model_version == "", name="version-is-job-name"):
                publish(
                    upload, exported, model, evaluation, decision, destination, model_name,
                    JOB_NAME,
                )  # fmt: skip
            with dsl.Else(name="version-given"):
                publish(
                    upload, exported, model, evaluation, decision, destination, model_name,
                    model_version,
                )  # fmt: skip
        with dsl.Else(name="not-champion"):
            skipped = not_published(reason=challenged.outputs["reason"])
            skipped.set_caching_options(False)  # every gated run says why nothing was published

    return image_segmentation


def compile_pipeline(images: Images, path: str) -> str:
    """Write the pipeline template (YAML) for `images` to `path`; return the path."""
    compiler.Compiler().compile(build_pipeline(images), package_path=path)
    return path
