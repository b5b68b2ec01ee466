"""ADE20K's 150 classes and the whitelist that maps them to the output classes.

A whitelist is `|` between output classes and `:` between ADE20K classes merged into one, e.g.
"person|car:truck:van|sidewalk, pavement". A class is named by its full `Name` column from
objectInfo150.txt or by any one of its comma-separated synonyms that is not shared with another
class. Output class 0 is always `none`: every pixel of an ADE20K class that is not whitelisted,
a class like the others that the model learns and is scored on. ADE20K's own value 0 marks
pixels nobody annotated: they become IGNORE, which training and scoring skip, as the ADE20K
benchmark does.
"""

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from image_segmentation.errors import StageError

NUM_ADE_CLASSES = 150
NONE_LABEL = "none"
IGNORE = 255  # the mask value of pixels without a label: ADE20K's 0, and training's padding
LIVING_ROOM_WHITELIST = (
    "chair|wall|coffee table, cocktail table|ceiling|floor, flooring|bed|lamp"
    "|sofa, couch, lounge|windowpane, window|pillow"
)


@dataclass(frozen=True)
class AdeClass:
    index: int  # 1..150, the pixel value in ADE20K masks
    name: str  # the full Name column, stripped

    @property
    def synonyms(self) -> list[str]:
        return [part.strip() for part in self.name.split(",")]


@dataclass(frozen=True)
class Whitelist:
    """Output classes: `labels[k]` is the name of class k, `groups[k]` its ADE20K indices."""

    labels: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def lookup_table(self) -> np.ndarray:
        """A 256-entry table from ADE20K pixel value to output class: 0 for the classes not
        whitelisted, IGNORE for ADE20K's unlabelled 0."""
        table = np.zeros(256, dtype=np.uint8)
        table[0] = IGNORE
        for output_class, group in enumerate(self.groups):
            table[list(group)] = output_class
        return table


def load_ade_classes(path: Path | None = None) -> list[AdeClass]:
    """Parse objectInfo150.txt (tab separated; some rows carry trailing spaces)."""
    if path is None:
        text = resources.files("image_segmentation.data").joinpath("objectInfo150.txt").read_text()
    else:
        text = Path(path).read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    classes = [AdeClass(index=int(row[0].strip()), name=row[-1].strip()) for row in rows]
    if [c.index for c in classes] != list(range(1, NUM_ADE_CLASSES + 1)):
        raise StageError(f"{path or 'objectInfo150.txt'}: expected classes 1..150 in order")
    return classes


def _name_index(classes: list[AdeClass]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Every accepted name to its class; synonyms shared by several classes are kept apart."""
    by_name = {c.name: c.index for c in classes}
    owners: dict[str, list[int]] = {}
    for c in classes:
        for synonym in c.synonyms:
            owners.setdefault(synonym, []).append(c.index)
    ambiguous = {}
    for synonym, indices in owners.items():
        if len(indices) == 1:
            by_name.setdefault(synonym, indices[0])
        elif synonym not in by_name:
            ambiguous[synonym] = indices
    return by_name, ambiguous


def parse_whitelist(whitelist: str | None, classes: list[AdeClass] | None = None) -> Whitelist:
    """Turn a whitelist string into output classes; None or "" means all 150 classes."""
    classes = classes or load_ade_classes()
    if not whitelist:
        return Whitelist(
            labels=(NONE_LABEL, *(c.name for c in classes)),
            groups=((), *((c.index,) for c in classes)),
        )
    by_name, ambiguous = _name_index(classes)
    names_of = {c.index: c.name for c in classes}
    labels, groups, problems, seen = [NONE_LABEL], [()], [], {}
    for group_text in whitelist.split("|"):
        indices = []
        for raw in group_text.split(":"):
            name = raw.strip()
            if name in by_name:
                index = by_name[name]
                if index in seen:
                    problems.append(f"{name!r} is listed twice (also as {seen[index]!r})")
                seen[index] = name
                indices.append(index)
            elif name in ambiguous:
                options = "; ".join(f"{names_of[i]!r}" for i in ambiguous[name])
                problems.append(f"{name!r} names several classes, use one of: {options}")
            elif not name:
                problems.append(f"empty class name in {whitelist!r}")
            else:
                close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                problems.append(f"unknown class {name!r}{hint}")
        labels.append(":".join(names_of[i] for i in indices) if indices else group_text)
        groups.append(tuple(indices))
    if problems:
        raise StageError("bad whitelist: " + "; ".join(problems))
    return Whitelist(labels=tuple(labels), groups=tuple(groups))


def format_labels_file(names: Sequence[str]) -> str:
    """labels.txt as the legacy tool wrote it (`idx<TAB>label`), merged names joined by ':'."""
    rows = ["idx\tlabel"] + [f"{i}\t{label}" for i, label in enumerate(names)]
    return "\n".join(rows) + "\n"


def read_labels_file(path: Path) -> list[str]:
    """The labels of a labels.txt, in class order."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].split("\t") != ["idx", "label"]:
        raise StageError(f"{path}: not a labels file (expected the header 'idx<TAB>label')")
    labels = []
    for expected, line in enumerate(lines[1:]):
        index, _, label = line.partition("\t")
        if not index.strip().isdigit() or int(index) != expected or not label:
            raise StageError(f"{path}: line {expected + 2} should be '{expected}<TAB>label'")
        labels.append(label)
    return labels
