"""The train step on Vertex AI: a CustomJob made from the train component.

A plain pipeline step gets a machine that Vertex picks from CPU, memory and GPU limits. A
CustomJob runs the same container, with the same command line and artifacts, on the machine
type, GPU type and count and number of machines asked for, can stream scalars to a Vertex
TensorBoard, and restarts the whole job when a worker restarts, so every worker resumes from
the last completed epoch together. It calls the Vertex API, so it runs only on Vertex:
`kfp.local` runs the plain train component instead.

Worker pool 0 is the chief and has one machine; pool 1 has the other `replica_count - 1`.
Kubeflow cannot do arithmetic on a parameter, so with several machines a small step works out
pool 1's size, and the job goes in one of two branches.

A job that fails as a whole (a stock-out, a lost machine) is retried by the pipeline; the retry
writes to the same model folder, so it too resumes from the last completed epoch.
"""

from google_cloud_pipeline_components.v1.custom_job import (
    create_custom_training_job_from_component,
)
from kfp import dsl
from kfp.dsl import base_component

from components import worker_replicas_component
from components.images import Images

RETRIES = 2
# Vertex fills these in when the step runs: the run's service account, and a folder of the
# run under its pipeline root (the job's base output directory, needed with a TensorBoard).
RUN_SERVICE_ACCOUNT = "{{$.pipeline_service_account}}"
JOB_OUTPUT_DIR = (
    f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}-"
    f"{dsl.PIPELINE_TASK_ID_PLACEHOLDER}"
)


def custom_job(train: base_component.BaseComponent) -> base_component.BaseComponent:
    """The train component as a Vertex CustomJob that survives worker restarts."""
    return create_custom_training_job_from_component(
        train,
        display_name="train",
        restart_job_on_worker_restart=True,
        service_account=RUN_SERVICE_ACCOUNT,
        base_output_directory=JOB_OUTPUT_DIR,
    )


def worker_pool(job: base_component.BaseComponent, machine_type, accelerator_type,
                accelerator_count, replica_count) -> dict:  # fmt: skip
    """One worker pool spec: the job's container with machine and GPUs from pipeline values."""
    (template,) = job.component_spec.inputs["worker_pool_specs"].default
    return {
        **template,
        "machine_spec": {
            "machine_type": machine_type,
            "accelerator_type": accelerator_type,
            "accelerator_count": accelerator_count,
        },
        "replica_count": replica_count,
    }


def train_on_vertex(
    images: Images,
    job: base_component.BaseComponent,
    machines: dict,
    job_settings: dict,
    train_inputs: dict,
) -> dsl.OneOf:
    """Run `job` on one machine or several; return the model output of the branch that ran.

    `machines` holds machine_type, accelerator_type, accelerator_count and replica_count;
    `job_settings` the CustomJob's own inputs (tensorboard, timeout).
    """
    replicas = machines["replica_count"]
    chief = worker_pool(job, machines["machine_type"], machines["accelerator_type"],
                        machines["accelerator_count"], 1)  # fmt: skip
    with dsl.If(replicas == 1, name="one-machine"):
        single = job(**train_inputs, **job_settings, worker_pool_specs=[chief])
        single.set_display_name("train").set_retry(RETRIES, backoff_duration="300s")
    with dsl.Else(name="several-machines"):
        workers = worker_replicas_component(images)(replica_count=replicas)
        pool = worker_pool(job, machines["machine_type"], machines["accelerator_type"],
                           machines["accelerator_count"], workers.output)  # fmt: skip
        several = job(**train_inputs, **job_settings, worker_pool_specs=[chief, pool])
        several.set_display_name("train").set_retry(RETRIES, backoff_duration="300s")
    return dsl.OneOf(single.outputs["model"], several.outputs["model"])
