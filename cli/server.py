"""Start and stop a real headless ComfyUI server (CPU, loopback) with this pack, as its own process.

The host is found like the tests find it: ``COMFYUI_PATH``, else ``~/comfy/ComfyUI``, else the ComfyUI folder
this pack is installed in. The server runs ``main.py`` with ``--base-directory`` pointing at a folder whose
``custom_nodes/comfyui-glance`` is a symlink to this pack, on a free port, and is stopped by its own process
group. Run this file with ``--launch HOST -- ARGS`` to start ComfyUI in the current process (that is what
``ComfyServer`` does); run it with no arguments to start a server by hand and stop it with Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-glance"
HOW_TO_PROVIDE = (
    "ComfyUI not found: set COMFYUI_PATH to a ComfyUI folder, put one at ~/comfy/ComfyUI, "
    "or install this pack in ComfyUI/custom_nodes/"
)


def _is_host(path: Path) -> bool:
    return (path / "comfy" / "model_management.py").is_file() and (path / "main.py").is_file()


def find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().resolve() if _is_host(Path(env).expanduser()) else None
    default = Path.home() / "comfy" / "ComfyUI"
    if _is_host(default):
        return default.resolve()
    for parent in PACK_DIR.parents:
        if _is_host(parent):
            return parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_pack(base_dir: Path) -> Path:
    """``base_dir/custom_nodes/comfyui-glance`` -> this pack (the host loads custom nodes from there)."""
    custom = base_dir / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    link = custom / PACK_NAME
    if link.is_symlink() and link.resolve() != PACK_DIR:
        link.unlink()
    if not link.exists():
        link.symlink_to(PACK_DIR, target_is_directory=True)
    return link


class ServerError(RuntimeError):
    pass


class ComfyServer:
    """A ComfyUI server process: ``with ComfyServer(base_dir) as srv: srv.url``; stopped on exit."""

    def __init__(self, base_dir: Path, host: Path | None = None, port: int | None = None, extra_args=(),
                 log_path: Path | None = None):
        self.host = Path(host) if host else find_comfyui()
        if self.host is None:
            raise ServerError(HOW_TO_PROVIDE)
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else self.base_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--launch", str(self.host), "--",
                "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base_dir),
                "--database-url", "sqlite:///:memory:", "--disable-api-nodes", *self.extra_args]

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        link_pack(self.base_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        # Own session = own process group: stop() ends the server and anything it started, nothing else.
        self.proc = subprocess.Popen(self.command(), cwd=str(self.host), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while starting; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc, else psutil)."""
        status = Path(f"/proc/{self.proc.pid}/status")
        if status.is_file():
            match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status.read_text(), re.M)
            if match:
                return int(match.group(1)) * 1024
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # Ctrl-C first (ComfyUI stops cleanly), then SIGTERM, then SIGKILL if it is stuck in a long node.
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "ComfyServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the launcher: runs inside the server process -------------------------------------------------------

def _torchvision_needs_op_schemas() -> bool:
    """A CUDA build of torchvision next to a CPU torch cannot register its C ops, so its import fails unless
    the op schemas it looks up exist (only some machines have this mix)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or "torchvision" in sys.modules:
        return False
    version_file = Path(spec.origin).parent / "version.py"
    if not version_file.is_file():
        return False
    match = re.search(r"^__version__\s*=\s*['\"][^'\"]*\+cu\d+", version_file.read_text(), re.M)
    import torch

    return bool(match) and torch.version.cuda is None


_schema_lib = None


def define_torchvision_op_schemas() -> None:
    """Define the two op schemas torchvision looks up at import, when (and only when) it needs them."""
    global _schema_lib
    if _schema_lib is not None or not _torchvision_needs_op_schemas():
        return
    import torch

    _schema_lib = torch.library.Library("torchvision", "FRAGMENT")  # kept alive for the process's lifetime
    _schema_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _schema_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _launch(host: Path, argv: list[str]) -> None:
    import runpy

    # A server started from a background job inherits an ignored SIGINT; stop() relies on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    define_torchvision_op_schemas()
    main = host / "main.py"
    sys.argv = [str(main), *argv]
    sys.path.insert(0, str(host))
    if str(Path(__file__).resolve().parent) in sys.path:
        sys.path.remove(str(Path(__file__).resolve().parent))
    runpy.run_path(str(main), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--launch"]:
        rest = argv[2:]
        _launch(Path(argv[1]), rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    parser = argparse.ArgumentParser(description="Start a headless ComfyUI (CPU, loopback) with this pack; Ctrl-C stops it.")
    parser.add_argument("--base-dir", type=Path, required=True, help="ComfyUI base directory (models/, input/, output/).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: a free one).")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with ComfyServer(args.base_dir, port=args.port) as srv:
        print(json.dumps({"url": srv.url, "pid": srv.proc.pid, "log": str(srv.log_path)}), flush=True)
        try:
            while srv.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
