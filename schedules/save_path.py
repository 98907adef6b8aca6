"""Where a file the user names is saved: one rule for every file the pack writes into a models folder."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath


def resolve_save_name(save_name: str, root: Path, suffix: str, where: str, example: str,
                      input_name: str = "save_name") -> tuple[str, Path]:
    """(name relative to ``root`` with ``suffix``, absolute path inside ``root``). Refuses an empty name, absolute
    paths, '..' and '.' parts and anything that resolves outside ``root``; errors name ``input_name`` and ``where``
    (e.g. 'models/loras'). Subfolders are allowed."""
    raw = (save_name or "").strip()
    name = raw.replace("\\", "/")
    if not name or name.endswith("/"):
        raise ValueError(f"{input_name}: give a file name, e.g. '{example}'.")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(raw).is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{input_name}: '{save_name}' is an absolute path; give a name relative to {where}.")
    if any(p in ("..", ".") for p in PurePosixPath(name).parts):
        raise ValueError(f"{input_name}: '{save_name}' contains '..' or '.'; the file must stay inside {where}.")
    if not name.lower().endswith(suffix):
        name += suffix
    root = Path(root).resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"{input_name}: '{save_name}' resolves outside {where}.")
    return name, path
