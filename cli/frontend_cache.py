"""The newest ComfyUI frontend, fetched once into a cache, for a host's ``--front-end-root``.

Users who update get a newer ``comfyui-frontend-package`` than the one a host pins. This fetches that wheel from the
package registry with pip (``pip download --no-deps comfyui-frontend-package==VERSION``), unpacks it, and gives
the wheel's ``comfyui_frontend_package/static`` folder, which a host serves with ``--front-end-root DIR``.

The cache is ``$GLANCE_CACHE_DIR`` or ``~/.cache/comfyui-glance``; a version is unpacked once (atomically: a
half-unpacked folder is never used). ``python cli/frontend_cache.py`` prints the static folder, or one line saying
why it cannot be had (exit 1).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NEWEST = "1.58.1"  # comfyui-frontend-package, Oct 2026: Reka UI instead of PrimeVue
PACKAGE = "comfyui-frontend-package"


class FrontendUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("GLANCE_CACHE_DIR") or Path.home() / ".cache" / "comfyui-glance").expanduser()


def static_dir(version: str = NEWEST, python: str | None = None, timeout: float = 600.0) -> Path:
    """The ``static`` folder of ``comfyui-frontend-package==version``, fetched (with ``python -m pip``) and unpacked
    into the cache on first use. Raises FrontendUnavailable with one line when it cannot be had."""
    root = cache_dir() / f"frontend-{version}"
    static = root / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".frontend-{version}-", dir=root.parent) as tmp:
        cmd = [python or sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
               f"{PACKAGE}=={version}", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FrontendUnavailable(f"{PACKAGE}=={version} could not be fetched ({' '.join(cmd[:5])} ...): {e}") from e
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
            raise FrontendUnavailable(f"{PACKAGE}=={version} could not be fetched with pip "
                                      f"({lines[-1].strip() if lines else f'exit {done.returncode}'})")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as e:
            raise FrontendUnavailable(f"{wheels[0].name} could not be unpacked: {e}") from e
        if not (unpacked / "comfyui_frontend_package" / "static" / "index.html").is_file():
            raise FrontendUnavailable(f"{wheels[0].name} has no comfyui_frontend_package/static/index.html")
        try:
            os.replace(unpacked, root)  # atomic; another process may have won the race
        except OSError:
            if not (static / "index.html").is_file():
                shutil.rmtree(root, ignore_errors=True)
                os.replace(unpacked, root)
    return static


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=NEWEST, help=f"{PACKAGE} version (default: {NEWEST}, the newest tested)")
    args = parser.parse_args(argv)
    try:
        print(static_dir(args.version))
    except FrontendUnavailable as e:
        print(f"frontend_cache: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
