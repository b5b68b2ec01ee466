"""One Kubeflow container component per stage; each runs the stage's command line, nothing more.

Artifacts are folders (files for Metrics, ClassificationMetrics and HTML) at the local paths
Kubeflow gives (`/gcs/...` on Vertex). Every stage step starts with `--executor-input '{{$}}'`,
so the stage itself writes the executor output Kubeflow reads its artifacts (with Metrics
values) and parameter outputs from. Training is not a component here: `training_job` writes the
worker pools of the Vertex AI CustomJob that trains (see pipelines/training.py). One more
component helps the pipeline: `not_published` only logs why the challenge stopped a run.
The components are made per image set, so one pipeline definition compiles for any registry
and tag.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import Images

PYTHON = "python"  # on the images' PATH: the virtual environment that holds the package
STAGE = [PYTHON, "-m", "image_segmentation"]
EXECUTOR = ["--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
DOWNLOAD_SCRATCH = "/tmp/ade20k-archive"  # the zip goes to local disk, not the mounted bucket
NOT_PUBLISHED_SCRIPT = "import sys; print(f'not converted or uploaded, stopped by {sys.argv[1]}')"


def stage_command(stage: str, *options: str) -> list[str]:
    """`python -m image_segmentation --executor-input {{$}} [OPTIONS] STAGE`."""
    return [*STAGE, *EXECUTOR, *options, stage]


def download_component(images: Images):
    @dsl.container_component
    def download(source: str, sha1: str, dataset: Output[Dataset]):
        """Download ADE20K's zip (http(s), gs:// or a path) and verify its SHA-1: the zip,
        with its manifest, is the dataset."""
        return dsl.ContainerSpec(
            image=images.for_stage("download"),
            command=stage_command("download"),
            args=[
                "--source", source,
                "--sha1", sha1,
                "--output-dir", dataset.path,
                "--archive-dir", DOWNLOAD_SCRATCH,
            ],
        )  # fmt: skip

    return download


def prepare_component(images: Images):
    @dsl.container_component
    def prepare(
        dataset: Input[Dataset],
        whitelist: str,
        threshold: float,
        train_shards: int,
        val_shards: int,
        prepared: Output[Dataset],
    ):
        """Keep the whitelisted classes of ADE20K and write TFRecord shards with labels.txt."""
        return dsl.ContainerSpec(
            image=images.for_stage("prepare"),
            command=stage_command("prepare"),
            args=[
                "--dataset-dir", dataset.path,
                "--output-dir", prepared.path,
                "--whitelist", whitelist,
                "--threshold", threshold,
                "--train-shards", train_shards,
                "--val-shards", val_shards,
            ],
        )  # fmt: skip

    return prepare


def training_job_component(images: Images):
    @dsl.container_component
    def training_job(
        data: Input[Dataset],
        image_size: int,
        alpha: float,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        steps_per_epoch: int,
        init: str,
        resize: str,
        machine_type: str,
        accelerator_type: str,
        accelerator_count: int,
        replica_count: int,
        scheduling_strategy: str,
        model: Output[Model],
        worker_pool_specs: dsl.OutputPath(list),
        base_output_directory: dsl.OutputPath(str),
    ):
        """Check the training settings and write the Vertex training job's worker pools, with
        every value final; `model` is the folder the job trains into."""
        return dsl.ContainerSpec(
            image=images.for_stage("training-job"),
            command=stage_command("training-job"),
            args=[
                "--train-image", images.for_stage("train"),
                "--machine-type", machine_type,
                "--accelerator-type", accelerator_type,
                "--accelerator-count", accelerator_count,
                "--replica-count", replica_count,
                "--scheduling-strategy", scheduling_strategy,
                "--data-dir", data.path,
                "--model-dir", model.path,
                "--model-uri", model.uri,
                "--worker-pool-specs", worker_pool_specs,
                "--base-output-directory", base_output_directory,
                "--",
                "--image-size", image_size,
                "--alpha", alpha,
                "--epochs", epochs,
                "--batch-size", batch_size,
                "--learning-rate", learning_rate,
                "--steps-per-epoch", steps_per_epoch,
                "--init", init,
                "--resize", resize,
            ],
        )  # fmt: skip

    return training_job


def evaluate_component(images: Images):
    @dsl.container_component
    def evaluate(
        data: Input[Dataset],
        model: Input[Model],
        evaluation: Output[Artifact],
        metrics: Output[Metrics],
        confusion_matrix: Output[ClassificationMetrics],
        report: Output[HTML],
        miou: dsl.OutputPath(float),
    ):
        """Score the model on the whole validation split; `miou` (mean IoU, 'none' scored as a
        class, unlabelled pixels not) is the value the quality gate tests."""
        return dsl.ContainerSpec(
            image=images.for_stage("evaluate"),
            command=stage_command("evaluate"),
            args=[
                "--data-dir", data.path,
                "--model-dir", model.path,
                "--output-dir", evaluation.path,
                "--metrics-json", metrics.path,
                "--confusion-matrix-json", confusion_matrix.path,
                "--report-html", report.path,
                "--miou-output", miou,
            ],
        )  # fmt: skip

    return evaluate


def challenge_component(images: Images):
    @dsl.container_component
    def challenge(
        evaluation: Input[Artifact],
        data: Input[Dataset],
        destination: str,
        model_name: str,
        min_miou: float,
        min_improvement: float,
        replace_champion: bool,
        decision: Output[Artifact],
        publish: dsl.OutputPath(str),
        reason: dsl.OutputPath(str),
    ):
        """Decide whether the evaluated model is published: it must reach min_miou and beat
        the champion of DESTINATION/MODEL_NAME by min_improvement on the same validation data
        (the champion's FP32 TFLite model is scored on this run's when needed)."""
        return dsl.ContainerSpec(
            image=images.for_stage("challenge"),
            command=stage_command("challenge"),
            args=[
                "--evaluation-dir", evaluation.path,
                "--data-dir", data.path,
                "--destination", destination,
                "--model-name", model_name,
                "--min-miou", min_miou,
                "--min-improvement", min_improvement,
                "--replace-champion", replace_champion,
                "--output-dir", decision.path,
                "--publish-output", publish,
                "--reason-output", reason,
            ],
        )  # fmt: skip

    return challenge


def not_published_component(images: Images):
    @dsl.container_component
    def not_published(reason: str):
        """Say in the run's logs which rule stopped the run and by how much; the run itself
        succeeds."""
        return dsl.ContainerSpec(
            image=images.image("light"),
            command=[PYTHON, "-c", NOT_PUBLISHED_SCRIPT],
            args=[reason],
        )

    return not_published


def convert_component(images: Images):
    @dsl.container_component
    def convert(
        model: Input[Model],
        evaluation: Input[Artifact],
        data: Input[Dataset],
        max_miou_drop: float,
        quality_images: int,
        exported: Output[Model],
    ):
        """Convert the trained model to Core ML (.mlpackage) and TFLite; export.json carries
        the evaluate stage's metrics of it, and the Core ML file's own scores on the
        validation split (the smallest compression within max_miou_drop when not negative)."""
        return dsl.ContainerSpec(
            image=images.for_stage("convert"),
            command=stage_command("export"),
            args=[
                "--model-dir", model.path,
                "--evaluation-dir", evaluation.path,
                "--data-dir", data.path,
                "--max-miou-drop", max_miou_drop,
                "--quality-images", quality_images,
                "--output-dir", exported.path,
            ],
        )  # fmt: skip

    return convert


def upload_component(images: Images):
    @dsl.container_component
    def upload(
        exported: Input[Model],
        model: Input[Model],
        evaluation: Input[Artifact],
        challenge: Input[Artifact],
        destination: str,
        model_name: str,
        version: str,
        uris: Output[dsl.Artifact],
    ):
        """Publish the exported files as gs://DESTINATION/MODEL_NAME/VERSION with a manifest
        whose metrics are the evaluation's of the model's weights, then make it the champion
        (champion.json) unless another run became champion since the challenge."""
        return dsl.ContainerSpec(
            image=images.for_stage("upload"),
            command=stage_command("upload"),
            args=[
                "--export-dir", exported.path,
                "--model-dir", model.path,
                "--evaluation-dir", evaluation.path,
                "--challenge-dir", challenge.path,
                "--destination", destination,
                "--model-name", model_name,
                "--version", version,
                "--output-uris", uris.path,
            ],
        )  # fmt: skip

    return upload
