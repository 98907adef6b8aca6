"""The pack's one atomic file writer: a file appears whole under its name or not at all (standard library only).

Used by the LoRA files (training/lora_file.py), saved schedules (schedules/files.py), and, as a client that imports
``schedules`` without the host, the demo model kit (cli/model_kit.py, cli/emoji_data.py) and the kit builders
(benchmarks/repro).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path, write, *, overwrite: bool = True, mode: int | None = 0o644) -> Path:
    """``write(tmp)`` writes a temporary file next to ``path``, which then takes its name in one step.

    ``overwrite=False`` never replaces a file: ``FileExistsError`` if ``path`` exists, also when it appeared
    while writing (the file is hard-linked into place). ``mode``: permissions of the new file (temporary files
    are created readable by their owner only; models and outputs are shared files); None keeps them.
    Readers never see half a file, and a failed write leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"'{path}' already exists; nothing overwritten")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic_group(writes, *, before_placing=None, mode: int | None = 0o644) -> list[Path]:
    """Several new files as one unit [(path, write)]: every ``write(tmp)`` runs first; then all of them take their
    names, or none does (a name that exists or appears meanwhile takes back the ones placed before it). Never
    overwrites; ``before_placing()`` runs after the writes, just before the names are taken."""
    paths = [Path(path) for path, _ in writes]
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for path, (_, write) in zip(paths, writes):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
            write(temps[-1])
            if mode is not None:
                os.chmod(temps[-1], mode)
        if before_placing is not None:
            before_placing()
        for path, tmp in zip(paths, temps):
            _place_new(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return paths


def _place_new(tmp: Path, path: Path) -> None:
    """``tmp`` takes the name ``path``, which must not exist: a hard link fails if the name appeared meanwhile (no
    silent overwrite); on a filesystem without hard links, a check just before the rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"'{path}' appeared while writing; nothing overwritten") from None
    except OSError:  # a filesystem without hard links
        if path.exists():
            raise FileExistsError(f"'{path}' already exists; nothing overwritten") from None
        os.replace(tmp, path)
