"""An offline Vertex AI Pipelines emulator: runs the compiled template as Vertex runs it.

`make pipeline-local` and the tests run the very template `make pipeline-compile` writes. The
emulator walks its DAG (template.py), starts each container step with its exact command line
(steps.py: host processes or containers), and runs the train task through Google's own
CustomJob launcher from the locked google-cloud-pipeline-components (launcher.py) against a
loopback Vertex AI CustomJob service (custom_jobs.py) that parses the request strictly into
`google.cloud.aiplatform_v1.types.CustomJob` and runs the job's worker pools.

What it assumes Vertex does, and why (the evidence is the locked packages' own code):
- Artifacts are `gs://` URIs that a step sees under `/gcs/` (kfp's `Artifact.path` maps them
  so; the stages' own `kfp_executor.local_path` does the same), and so do the training
  machines of a CustomJob.
- A container step gets the ExecutorInput as kfp defines it (`{{$}}`), with an output file for
  each output parameter and one for the executor output, under the task's folder in the
  pipeline root. A step that writes executor_output.json is read from it; otherwise each
  output parameter is read from its file (as kfp's container components expect).
- A launcher's payload holds its input parameters as JSON text (strings unquoted inside the
  payload's own quotes), numbers as protobuf's JSON writer prints them: 1, never 1.0 (GCPC's
  own compiled defaults hold `replica_count: 1.0`, which proto-plus refuses unless printed so).
- A whole-string placeholder inside a constant may be filled typed or as text: undocumented,
  so the emulator does either (`substitution`), and the template must run both ways.
- Google's launcher writes the `gcp_resources` output (a JSON object naming the job) as soon
  as the job exists, into the file the executor input names, which the training machines see
  too; on a retry it reuses the job named in an existing file and only polls it. Whether a
  retried task gets the failed attempt's folder is undocumented: `retry_in_new_folder` picks.
- A CustomJob's replicas get CLUSTER_SPEC and TF_CONFIG, and AIP_MODEL_DIR,
  AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR under the base output directory whenever one
  is set (the `CustomJobSpec.base_output_directory` docstring of google.cloud.aiplatform_v1).
- Steps are cached on their image, command and inputs; a cached step's outputs are the
  earlier run's, URIs included.

What it does not do: create pipeline jobs through the API (tests/vertex_fake.py covers the
submission), apply resource limits or machine types, restart single workers, or talk to any
Google service. The launcher's connection is the one thing changed (launcher.py).
"""
