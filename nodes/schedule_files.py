"""Saved schedules: small JSON files in ``models/glance_schedules`` (a models folder registered with the host).

Names are relative to the folder (subfolders allowed, ``.json`` added); names that would leave it are refused.
Files are written whole (a temporary file renamed into place); a later fit under the same name replaces it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import folder_paths

from ..training.atomic_file import write_atomic
from ..validation import save_path

FOLDER = "glance_schedules"
SUFFIX = ".json"


def register_folder() -> None:
    """``models/glance_schedules`` for ``.json`` files (extra_model_paths.yaml may add more folders)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    _paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if isinstance(extensions, set):
        extensions.add(SUFFIX)


register_folder()


def schedules_dir() -> Path:
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def list_schedules() -> list[str]:
    return [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(SUFFIX)]


def resolve_save_path(save_name: str, input_name: str = "save_name") -> tuple[str, Path]:
    """(relative name with .json, absolute path inside models/glance_schedules); refuses names that escape it or
    cannot be saved (validation.save_path)."""
    return save_path(save_name, schedules_dir(), SUFFIX, input_name, f"models/{FOLDER}")


def auto_name(model_class: str, fingerprint: str | None, width: int, height: int, cfg: float, steps_slow: int,
              steps_fast: int) -> str:
    """A name that says what the schedule is for, e.g. ``SD3_1a2b3c4d_1024x1024_cfg5_5+5``."""
    tag = f"_{fingerprint[:8]}" if fingerprint else ""
    cfg_text = f"{cfg:g}".replace(".", "p")
    name = f"{model_class}{tag}_{width}x{height}_cfg{cfg_text}_{steps_slow}+{steps_fast}"
    return re.sub(r"[^A-Za-z0-9_+.-]", "_", name)


def save(record: dict, path: Path) -> None:
    """Write ``record`` as JSON, whole or not at all (the pack's one atomic writer); replaces a same-named fit."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))


def load(name: str, input_name: str = "preset") -> dict:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: '{name}' is not in models/{FOLDER}; fit one with Glance Fit Schedule "
                                "(or put the file there) and refresh the page.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{input_name}: '{name}' cannot be read as a schedule file ({e}).") from None
