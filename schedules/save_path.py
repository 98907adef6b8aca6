"""Where a file the user names is saved: one rule for every file the pack writes into a models folder.

Refused before any work: empty names, NUL characters, absolute paths, '..'/'.' parts, names no list shows, names too
long for the filesystem (with the atomic writer's temporary name), names that leave the folder, a folder part that
is a file, and a name that is a folder. Each error starts with the input's name and says what to do instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

NAME_MAX = 255  # bytes per file or folder name on the common filesystems, where pathconf cannot say
TEMP_EXTRA = len("..") + 8 + len(".tmp")  # the atomic writer's temporary name: ".<name>.XXXXXXXX.tmp"


def resolve_save_name(save_name, root: Path, suffix: str, input_name: str, where: str) -> tuple[str, Path]:
    """(relative name with ``suffix``, absolute path inside ``root``) for a name a node saves under.

    Refused, before anything runs: empty names, NUL characters, absolute paths, '..'/'.' parts, a name the host's
    lists would not show (only dots before the suffix), names too long for the filesystem (with the temporary
    name the atomic writer uses beside the file), names that leave ``root``, a folder part that is a file, and a
    name that is a folder. Whether an existing file may be replaced is the caller's choice."""
    raw = save_name if isinstance(save_name, str) else ""
    name = raw.strip().replace("\\", "/")
    example = "e.g. 'glance/my_slow_lora'" if suffix == ".safetensors" else "e.g. 'my_model_10_steps'"
    if not name or name.endswith("/"):
        raise ValueError(f"{input_name}: give a file name, {example}.")
    if "\x00" in name:
        raise ValueError(f"{input_name}: {raw!r} contains a NUL character; give a plain file name, {example}.")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(raw.strip()).is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{input_name}: '{raw}' is an absolute path; give a name relative to {where}.")
    parts = [p for p in name.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"{input_name}: '{raw}' contains '..' or '.'; the file must stay inside {where}.")
    if not name.lower().endswith(suffix):
        name += suffix
    stem = PurePosixPath(name).name[:-len(suffix)]
    if not stem.strip("."):
        raise ValueError(f"{input_name}: '{raw}' would save '{PurePosixPath(name).name}', which no file list shows; "
                         f"give a name with letters or digits, {example}.")
    root = Path(root).resolve()
    limit = _name_max(root)
    for i, part in enumerate(PurePosixPath(name).parts):
        extra = TEMP_EXTRA if i == len(PurePosixPath(name).parts) - 1 else 0
        size = len(os.fsencode(part)) + extra
        if size > limit:
            raise ValueError(f"{input_name}: '{part[:40]}...' is too long for a file name here ({size} of at most "
                             f"{limit} bytes, with the {extra} the saving adds); give a shorter name.")
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"{input_name}: '{raw}' resolves outside {where}.")
    folder = root
    for part in path.relative_to(root).parts[:-1]:
        folder = folder / part
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{input_name}: '{folder.relative_to(root).as_posix()}' is a file in {where}, so nothing "
                             f"can be saved inside it; give another name.")
    if path.is_dir():
        raise ValueError(f"{input_name}: '{name}' is a folder in {where}; give another name.")
    return name, path


def _name_max(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer
        return NAME_MAX
