"""Class lists shared by the stages (core layer): the PASCAL VOC classes and the one parser of class-name options."""
from __future__ import annotations

from pathlib import Path

from iagcn.errors import UserError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 20 PASCAL VOC classes in the devkit's order."""


def parse_class_names(text: str | None, *, option: str) -> list[str] | None:
    """A class-name option (``--classes``, ``--class-names``): a file of names (one a line) or a comma-separated
    list. None: None (the caller's default). Names must be unique."""
    from iagcn.validation import read_user_text, require_unique

    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        names = read_user_text(path, what=option).splitlines()
    else:  # a list: comma-separated, or one a line (what `extract --classes-from` passes when a name holds a comma)
        names = text.splitlines() if "\n" in text else text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"{option} {text}: no class names found; give a comma-separated list or a file of names "
                        f"(one a line)")
    require_unique(names, what="class name", where=f"{option} {text}")
    return names
