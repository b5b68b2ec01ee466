"""The train step on Vertex AI: a CustomJob whose worker pools a small step writes first.

A CustomJob runs the train image on the machine type, GPU type and count and number of
machines asked for, can stream scalars to a Vertex TensorBoard, can use Spot or Flex-start
capacity, and restarts the whole job when a worker restarts, so every worker resumes from the
last completed epoch together.

The `training-job` step (image_segmentation/stages/training_job.py) checks the settings and
writes the job's worker pools as plain values: JSON numbers for the counts, text for the
command line, the /gcs paths of the data and of the model folder, which is that step's own
output artifact.
The job is Google's CustomTrainingJobOp, given that list whole; it holds no placeholder for
Vertex to fill in, so the request cannot depend on how Vertex substitutes one.

Retries: the job task is retried by the pipeline. Google's launcher reuses the job named in a
`gcp_resources` file it finds, so a retry either polls the failed job again and fails at once,
or, in a fresh folder, starts a new job that resumes in the same model folder. Either way
nothing is lost: a rerun of the pipeline with the same settings takes the `training-job` step
from the cache, so its new job trains into the same model folder and resumes too.
"""

from google_cloud_pipeline_components.v1.custom_job import CustomTrainingJobOp
from kfp import dsl

from components import training_job_component
from components.images import Images

RETRIES = 2
# Vertex fills this in when the step runs: the run's service account, which the job runs as.
RUN_SERVICE_ACCOUNT = "{{$.pipeline_service_account}}"


def train_on_vertex(
    images: Images, data, settings: dict, machines: dict, job_settings: dict
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """The `training-job` step and the CustomJob task that trains; the model is the former's
    `model` output, complete once the latter has succeeded.

    `settings` are the train options, `machines` machine_type, accelerator_type,
    accelerator_count, replica_count and scheduling_strategy, `job_settings` the CustomJob's
    own tensorboard and timeout.
    """
    spec = training_job_component(images)(data=data, **settings, **machines)
    spec.set_display_name("training-job")
    job = CustomTrainingJobOp(
        display_name="train",
        worker_pool_specs=spec.outputs["worker_pool_specs"],
        base_output_directory=spec.outputs["base_output_directory"],
        restart_job_on_worker_restart=True,
        service_account=RUN_SERVICE_ACCOUNT,
        strategy=machines["scheduling_strategy"],
        **job_settings,
    )
    job.set_display_name("train").set_retry(RETRIES, backoff_duration="300s")
    return spec, job
