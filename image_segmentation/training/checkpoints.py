"""The training run's checkpoints in OUTPUT/checkpoints/: one file per completed epoch, so a run
restarted with the same output dir (a preempted Vertex worker) resumes after its last epoch.

A checkpoint holds every model and optimizer variable under its Keras path ("conv1_sub1/kernel",
"adam/conv1_sub1_kernel_momentum"), so it loads by name, never by position; the epoch; the
history so far, so history.json keeps the epochs of every attempt; and the run's key, the
settings a run must share with it to resume from it. It is one npz file, complete before it
appears (temp + rename: a plain file rename, which a Cloud Storage FUSE mount allows). The last
KEEP checkpoints are kept, and the best epoch's (`best_epoch`), whose weights the model folder
publishes.

Keras' BackupAndRestore callback is not used: it writes the weights (layers by their order,
optimizer variables by index) and the epoch as two files in place, so a kill during or between
the writes leaves a broken or mismatched pair; every machine of a cluster writes them, to the
same place; it keeps no history; and unless told otherwise it deletes them when fit ends, so a
rerun of a finished run would train again from the start.
"""

import json
import re
from pathlib import Path

import keras
import numpy as np

from image_segmentation import disk, files
from image_segmentation.contracts.evaluation_folder import GATE_METRIC
from image_segmentation.errors import StageError, short_json

DIRECTORY = "checkpoints"  # under the output dir
INIT_REPORT = "init.json"  # what --init set, for the model's config
KEEP = 2
BEST_METRIC = f"val_{GATE_METRIC}"  # the quality gate's metric, on the validation split
STATE = "state"  # the npz entry of the epoch, history and run key
# History names of checkpoints written by earlier versions, read as today's.
RENAMED = {"val_mean_iou": BEST_METRIC}
_FILE_NAME = re.compile(r"^epoch-(\d{4,})\.npz$")


def _variables(model: keras.Model) -> dict[str, keras.Variable]:
    """The model's and its optimizer's variables by checkpoint name: "model/PATH" and
    "optimizer/PATH"."""
    variables = [("model", v) for v in model.weights]
    variables += [("optimizer", v) for v in model.optimizer.variables]
    named = {f"{group}/{variable.path}": variable for group, variable in variables}
    if len(named) != len(variables):
        raise ValueError("two variables share a path: a checkpoint could not tell them apart")
    return named


def best_epoch(history: list[dict]) -> int:
    """The epoch (from 1) with the highest validation mean IoU, the first of equals; the last
    epoch when none was scored."""
    scored = [(entry[BEST_METRIC], -entry["epoch"]) for entry in history if BEST_METRIC in entry]
    return -max(scored)[1] if scored else history[-1]["epoch"]


def path_of(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"epoch-{epoch:04d}.npz"


def save(directory: Path, model: keras.Model, epoch: int, history: list[dict], run: dict) -> Path:
    """Write the checkpoint of a completed epoch, then remove all but the last KEEP and the
    best epoch's.

    The file appears only when complete, so a kill mid-write leaves the previous checkpoint as
    the latest; the partial file such a kill leaves (as large as a checkpoint) is removed here
    by the next save, since one run at a time writes the folder (`disk.sole_writer`).
    """
    for leftover in Path(directory).glob(".epoch-*.partial"):
        leftover.unlink(missing_ok=True)
    arrays = {name: variable.numpy() for name, variable in _variables(model).items()}
    arrays[STATE] = np.array(json.dumps({"epoch": epoch, "history": history, "run": run}))
    path = path_of(directory, epoch)

    def write(part: Path) -> None:
        with open(part, "wb") as file:  # a file, since np.savez adds ".npz" to a name
            np.savez(file, **arrays)

    with disk.disk_full_error(path, None):
        files.atomic_write(path, write)
    best = path_of(directory, best_epoch(history))
    for old in list_checkpoints(directory)[:-KEEP]:
        if old != best:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Completed checkpoints, oldest first."""
    found = [p for p in Path(directory).glob("epoch-*.npz") if _FILE_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_FILE_NAME.match(p.name).group(1)))


def _state(text: str) -> dict:
    state = json.loads(text)
    for entry in state["history"]:
        for old, new in RENAMED.items():
            if old in entry:
                entry[new] = entry.pop(old)
    return state


def read_state(path: Path) -> dict:
    """The epoch, history and run key of a checkpoint, without its arrays."""
    with np.load(path, allow_pickle=False) as data:
        return _state(str(data[STATE]))


def restore(path: Path, model: keras.Model, optimizer: bool = True) -> dict:
    """Load every model (and unless told otherwise, optimizer) variable by name; return the
    checkpoint's state.

    Nothing is loaded unless every variable has a saved value of its shape and nothing saved
    is left over.
    """
    variables = _variables(model)
    with np.load(path, allow_pickle=False) as data:
        saved = {name: data[name] for name in data.files}
    if not optimizer:
        variables = {k: v for k, v in variables.items() if not k.startswith("optimizer/")}
        saved = {k: v for k, v in saved.items() if not k.startswith("optimizer/")}
    state = _state(str(saved.pop(STATE)))
    missing = [name for name in variables if name not in saved]
    unknown = [name for name in saved if name not in variables]
    misshapen = [
        name
        for name, variable in variables.items()
        if name in saved and saved[name].shape != tuple(variable.shape)
    ]
    problems = [
        f"{kind} {_names(names)}"
        for kind, names in (
            ("missing", missing),
            ("not in this model", unknown),
            ("of another shape", misshapen),
        )
        if names
    ]
    if problems:
        raise StageError(f"{path} does not fit this model: {'; '.join(problems)}")
    for name, variable in variables.items():
        variable.assign(saved[name])
    return state


def latest(directory: Path, run: dict) -> Path | None:
    """The latest checkpoint, if any; refuse one written by a run with other settings, since
    resuming it would train neither run."""
    found = list_checkpoints(directory)
    if not found:
        return None
    saved = read_state(found[-1])["run"]
    names = [*run, *(name for name in saved if name not in run)]
    differ = [
        f"{name} {short_json(saved.get(name))}, now {short_json(run.get(name))}"
        for name in names
        if saved.get(name) != run.get(name)
    ]
    if differ:
        raise StageError(
            f"{directory} holds checkpoints of a run with other settings ({'; '.join(differ)}): "
            "use a new --output-dir, or delete the checkpoints to start over"
        )
    return found[-1]


def save_init_report(directory: Path, report: dict | None) -> None:
    """Keep what a new run's --init set (`pretrained.initialize`; None: nothing), for the
    model's config."""
    files.write_json(Path(directory) / INIT_REPORT, report)


def read_init_report(directory: Path) -> dict | None:
    """The saved --init report; None when the run's weights did not start from ResNet-50."""
    path = Path(directory) / INIT_REPORT
    return files.read_json(path) if path.is_file() else None


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
