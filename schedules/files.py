"""Saved schedules: small JSON files (records: ``schedules/records.py``) in a folder the node modules name
(``models/glance_schedules``, registered with the host by the entry point: ``nodes/common/folders.py``).

Names are relative to the folder (subfolders allowed, ``.json`` added); names that would leave it are refused.
Files are written whole (``atomic_file.py``); a later fit under the same name replaces it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .atomic_file import write_atomic
from .records import identity_differences, schedule_from_record
from .save_path import resolve_save_name

log = logging.getLogger("comfyui-glance")

FOLDER = "glance_schedules"
SUFFIX = ".json"


def resolve_save_path(save_name: str, root: Path, input_name: str = "save_name") -> tuple[str, Path]:
    """(relative name with .json, absolute path inside ``root``, the schedules folder); refuses names that escape it
    or cannot be saved (``save_path.py``)."""
    return resolve_save_name(save_name, root, SUFFIX, input_name, f"models/{FOLDER}")


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


def load(path: Path, name: str, input_name: str = "preset") -> dict:
    """The JSON of the schedule file ``name`` at ``path``; a clear error naming ``input_name`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{input_name}: '{name}' cannot be read as a schedule file ({e}).") from None


def load_schedule(path: Path, name: str, identity: dict, sigma_max: float | None = None) -> tuple:
    """(SIGMAS, switch sigma) of the schedule file ``name`` at ``path``, checked against the model's largest sigma
    ``sigma_max``; a warning when it was fitted to a model other than the one ``identity``
    (``records.model_identity``) describes."""
    record = load(path, name)
    try:
        sigmas, switch = schedule_from_record(record, sigma_max)
    except ValueError as e:
        raise ValueError(f"preset: '{name}' in models/{FOLDER} is not usable: {e}. Fit it again with "
                         "Glance Fit Schedule.") from None
    differences = identity_differences(record.get("model") or {}, identity)
    if differences:
        log.warning("Glance Sigmas: schedule '%s' was fitted to another model (%s); it may sample worse here than on "
                    "the model it was fitted to.", name, "; ".join(differences))
    return sigmas, switch
