"""The training-job stage: the Vertex AI CustomJob that trains, written out as plain values.

On Vertex the train step is a CustomJob made from a list of worker pools (machine type, GPU
type and count, number of machines, and the container's command line). This stage writes
that list with every value already final: numbers are JSON numbers, the train command line is
text, the data and model folders are the /gcs paths the training machines see. Nothing in it
is left for Vertex to fill in, so the request is the same whether Vertex would substitute a
placeholder as text or as a typed value. The train options are checked here with the train
stage's own parser, and the machine settings with the rules Vertex applies, so a bad setting
fails in seconds, before any GPU is paid for.

The model folder is this step's own output artifact. The training job writes into it; a
retried job, or a rerun of the same settings (this step is cached), writes into the same
folder and resumes after its last completed epoch. Its gs:// URI is also the job's base output
directory, so the AIP_TENSORBOARD_LOG_DIR that Vertex derives from it is the model folder's
`logs/`, where the trainer writes its scalars with or without a TensorBoard instance.

Worker pool 0 is the chief, with one machine; pool 1 holds the other `replica_count - 1`.
"""

import argparse
import json
from pathlib import Path

from image_segmentation import files
from image_segmentation.errors import StageError
from image_segmentation.stages import train

OUTPUT_PARAMETERS = {"worker_pool_specs": list, "base_output_directory": str}
NO_ACCELERATOR = ("", "ACCELERATOR_TYPE_UNSPECIFIED")
# How Vertex finds the machines: on demand; Spot VMs (cheaper, can be preempted: the job is
# retried and resumes after its last completed epoch); or Flex-start (waits for capacity).
SCHEDULING_STRATEGIES = ("STANDARD", "SPOT", "FLEX_START")
TRAIN_COMMAND = ["python", "-m", "image_segmentation", "train"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--train-image", required=True, help="the image that trains")
    add("--machine-type", required=True, help="e.g. g2-standard-8")
    add("--accelerator-type", default="", help="e.g. NVIDIA_L4; empty: no GPU")
    add("--accelerator-count", type=int, default=0, help="GPUs per machine")
    add("--replica-count", type=int, default=1, help="machines, the chief included")
    add(
        "--scheduling-strategy",
        default="STANDARD",
        help=f"checked only (the job takes it directly): {', '.join(SCHEDULING_STRATEGIES)}",
    )
    add("--data-dir", required=True, help="the prepared data, as the machines see it")
    add("--model-dir", required=True, help="the model folder, as the machines see it")
    add("--model-uri", required=True, help="the model folder's gs:// URI")
    add("--worker-pool-specs", type=Path, required=True, help="file to write the pools to")
    add("--base-output-directory", type=Path, required=True, help="file to write the URI to")
    add("train_options", nargs=argparse.REMAINDER, help="-- then the train stage's options")


def machine_problems(
    machine_type: str, accelerator_type: str, count: int, replicas: int, strategy: str
) -> list[str]:
    """What Vertex would refuse in the machine settings, one line per problem."""
    problems = []
    if strategy not in SCHEDULING_STRATEGIES:
        problems.append(
            f"scheduling_strategy must be one of {', '.join(SCHEDULING_STRATEGIES)}, got "
            f"{strategy!r}"
        )
    if not machine_type.strip():
        problems.append("machine_type is empty")
    if replicas < 1:
        problems.append(f"replica_count must be at least 1, got {replicas}")
    if count < 0:
        problems.append(f"accelerator_count must be 0 or more, got {count}")
    if count > 0 and accelerator_type in NO_ACCELERATOR:
        problems.append(f"accelerator_count {count} needs an accelerator_type")
    if count == 0 and accelerator_type not in NO_ACCELERATOR:
        problems.append(f"accelerator_type {accelerator_type} needs an accelerator_count above 0")
    return problems


class _TrainParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise StageError(message)


def train_option_problems(options: list[str]) -> list[str]:
    """What the train stage refuses in `options` (`--name value` pairs): its parser's verdict
    on each option, then the settings' own checks (`train.settings_problems`) on the options
    that parsed, so every problem is named at once."""
    parser = _TrainParser(prog="train", add_help=False)
    train.add_arguments(parser)
    problems, parsed = [], []
    for index in range(0, len(options), 2):
        pair = options[index : index + 2]
        found = _parse_problems(parser, pair)
        problems += found
        parsed += [] if found else pair
    args = parser.parse_args(["--data-dir", "d", "--output-dir", "o", *parsed])
    return problems + train.settings_problems(train.settings_from_args(args))


def _parse_problems(parser: argparse.ArgumentParser, options: list[str]) -> list[str]:
    try:
        parser.parse_args(["--data-dir", "d", "--output-dir", "o", *options])
    except StageError as error:
        return [f"train option: {error}"]
    return []


def worker_pool_specs(
    image: str,
    command: list[str],
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    replica_count: int,
) -> list[dict]:
    """The chief's pool and, with several machines, the workers' pool, in CustomJob form."""
    machine = {"machine_type": machine_type}
    if accelerator_count:
        machine |= {"accelerator_type": accelerator_type, "accelerator_count": accelerator_count}
    container = {"image_uri": image, "command": command}
    pools = [{"machine_spec": machine, "replica_count": 1, "container_spec": container}]
    if replica_count > 1:
        pools.append({**pools[0], "replica_count": replica_count - 1})
    return pools


def run(args: argparse.Namespace) -> int:
    options = args.train_options[1:] if args.train_options[:1] == ["--"] else args.train_options
    problems = machine_problems(
        args.machine_type,
        args.accelerator_type,
        args.accelerator_count,
        args.replica_count,
        args.scheduling_strategy,
    )
    problems += train_option_problems(options)
    if not args.model_uri.startswith("gs://"):
        problems.append(f"--model-uri must be a gs:// URI, got {args.model_uri!r}")
    if problems:
        raise StageError("; ".join(problems))
    command = [*TRAIN_COMMAND, "--data-dir", args.data_dir, "--output-dir", args.model_dir]
    pools = worker_pool_specs(
        args.train_image,
        [*command, *options],
        args.machine_type,
        args.accelerator_type,
        args.accelerator_count,
        args.replica_count,
    )
    files.atomic_write(args.worker_pool_specs, lambda path: path.write_text(json.dumps(pools)))
    files.atomic_write(args.base_output_directory, lambda path: path.write_text(args.model_uri))
    return 0
