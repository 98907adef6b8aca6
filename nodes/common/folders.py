"""The host's models folders, resolved here only (``folder_paths``); the logic below gets plain paths.

``models/glance_schedules`` holds the fitted schedules (registered by the entry point, ``register_schedules_folder``);
``models/loras`` the LoRA files the loader reads and the trainers write.
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ...schedules.files import FOLDER, SUFFIX


def register_schedules_folder() -> None:
    """``models/glance_schedules`` for ``.json`` files (extra_model_paths.yaml may add more folders)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    _paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if isinstance(extensions, set):
        extensions.add(SUFFIX)


def schedules_dir() -> Path:
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def list_schedules() -> list[str]:
    return [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(SUFFIX)]


def schedule_file(name: str, input_name: str = "preset") -> Path:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: '{name}' is not in models/{FOLDER}; fit one with Glance Fit Schedule "
                                "(or put the file there) and refresh the page.")
    return Path(path)


def loras_dir() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0])


def list_loras() -> list[str]:
    return folder_paths.get_filename_list("loras")


def lora_file(input_name: str, file_name: str) -> Path:
    path = folder_paths.get_full_path("loras", file_name)
    if path is None:
        raise FileNotFoundError(
            f"{input_name}: '{file_name}' is not in models/loras. Put the file there (subfolders are fine) and "
            "refresh the node, or pick one from the list."
        )
    return Path(path)
