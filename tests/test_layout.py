"""The package's layout is its architecture: imports run one way, the command lines in
`stages/` are imported by nothing else, no module imports itself back through others, each
folder's `__init__.py` is its rule and nothing more, and bad settings are refused before
TensorFlow loads."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "image_segmentation"
FOLDERS = sorted(str(path.parent.relative_to(PACKAGE)) for path in PACKAGE.glob("*/**/__init__.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package modules `path` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES}


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_there_are_no_import_circles():
    circles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(GRAPH[name]):
            if state.get(imported) == "open":
                circles.append(" -> ".join([*trail[trail.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_only_stages_import_stages():
    """The command lines are the top layer: the entry point finds them by name (cli.STAGES)."""
    outside = {
        f"{name} imports {imported}"
        for name, imported_names in GRAPH.items()
        if not name.startswith("image_segmentation.stages")
        for imported in imported_names
        if imported.startswith("image_segmentation.stages")
    }
    assert outside == set()


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_folder_init_is_its_docstring_alone(folder):
    """Importing a folder must import nothing, or `--help` would start loading TensorFlow."""
    body = ast.parse((PACKAGE / folder / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr), folder
    assert isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)


# Runs the command line with TensorFlow, Keras and coremltools unimportable.
WITHOUT_TENSORFLOW = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "coremltools"):
            raise ImportError(f"{name} imported before the options were checked")
sys.meta_path.insert(0, Refuse())
from image_segmentation import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["train", "--learning-rate", "inf"], "--learning-rate must be a finite number > 0"),
        (["export", "--output", "bad"], "--output: invalid choice: 'bad'"),
        (["export", "--palettize", "--precision", "float32"], "starts from float16 weights"),
        (["export", "--max-miou-drop", "0.01"], "scores each compression: give --data-dir"),
    ],
)
def test_bad_settings_are_refused_before_tensorflow_loads(tmp_path, args, words):
    stage, extra = args[0], args[1:]
    folders = ["--output-dir", str(tmp_path / "out")]
    if stage == "train":
        folders += ["--data-dir", str(tmp_path / "data")]
    else:
        folders += ["--model-dir", str(tmp_path / "model")]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, stage, *folders, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
