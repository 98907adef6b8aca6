"""Make the previews ``workflows/<name>.jpg`` (the picture the host's template browser shows for a workflow).

Each preview is a screenshot of the workflow as shipped, loaded in the real frontend in headless Chromium: a real
ComfyUI (``COMFYUI_PATH``, else ``~/comfy/ComfyUI``) is started on loopback with a stand-in under every file the
workflows name (so the loaders show the shipped names, not errors; images the host ships, such as its
``input/example.png``, are its own), each ``workflows/<name>.json`` is dropped on
the page, and the canvas is captured with the graph fitted to it. A workflow that the page loads with a missing
node, an error shown, or nodes drawn over one another gets no preview (fix the workflow's layout first).

Each JPEG carries, in its comment (COM) segment, the sha256 of the workflow file it shows
(``comfyui-glance preview of workflows/<name>.json sha256=<hex> ...``); ``tests/test_workflows.py`` fails when a
workflow changes and its preview does not.

Run it with the Python the tests use (the host's environment: Playwright, Pillow; Debian's chromium):
    python cli/make_previews.py                 # every workflow
    python cli/make_previews.py --stale         # only those whose preview is missing or shows another version
    python cli/make_previews.py glance_qwen_image --frontend newest
    python cli/make_previews.py --check         # list stale previews, no browser (exit 1 if any)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
for p in (ROOT / "tests", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

HASH = re.compile(rb"sha256=([0-9a-f]{64})")
QUALITY = 85


def workflow_sha256(name: str) -> str:
    return hashlib.sha256((WORKFLOWS / f"{name}.json").read_bytes()).hexdigest()


def jpeg_comment(path: Path) -> bytes | None:
    """The COM segment of a JPEG (standard library only), or None."""
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xFE:
            return data[i + 4:i + 2 + length]
        if marker == 0xDA:  # start of scan: no header segment follows
            return None
        i += 2 + length
    return None


def stale(names: list[str]) -> list[str]:
    """Names whose preview is missing or carries another workflow hash."""
    out = []
    for name in names:
        jpg = WORKFLOWS / f"{name}.jpg"
        comment = jpeg_comment(jpg) if jpg.is_file() else None
        found = HASH.search(comment or b"")
        if not found or found.group(1).decode() != workflow_sha256(name):
            out.append(name)
    return out


def make(names: list[str], frontend: str) -> list[str]:
    """Write the previews of ``names``; returns the problems of those that got none."""
    import glance_browser as gb
    import glance_server as gs
    from PIL import Image

    from cli import frontend_cache
    from cli.client import ComfyClient
    from cli.server import ComfyServer, find_comfyui

    reason = gb.skip_reason()
    if reason:
        raise SystemExit(f"make_previews: {reason}")
    extra = []
    if frontend == "newest":
        try:
            extra = ["--front-end-root", str(frontend_cache.static_dir())]
        except frontend_cache.FrontendUnavailable as e:
            raise SystemExit(f"make_previews: {e}")
    problems = []
    with tempfile.TemporaryDirectory(prefix="glance-previews-") as tmp:
        base = Path(tmp)
        apis = [json.loads((WORKFLOWS / "api" / f"{n}.json").read_text()) for n in names
                if (WORKFLOWS / "api" / f"{n}.json").is_file()]
        # The host's own input files (it ships input/example.png, the image the workflows name) as the user has them.
        host_input = (find_comfyui() or Path("/nonexistent")) / "input"
        for f in host_input.glob("*.png") if host_input.is_dir() else []:
            (base / "input").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, base / "input" / f.name)
        gs.write_stand_ins(base, apis)
        with ComfyServer(base, extra_args=extra) as server:
            ComfyClient(server.url).post_json("/settings", gb.PAGE_SETTINGS)
            host_version = ComfyClient(server.url).get_json("/system_stats")["system"].get("comfyui_version", "?")
            with gb.Frontend(server.url) as fe:
                for name in names:
                    state = fe.drop(WORKFLOWS / f"{name}.json")
                    fe.dismiss_dialogs()
                    found = gb.load_problems(state) + gb.overlapping_nodes(state)
                    if found:
                        problems += [f"{name}: {p}" for p in found]
                        continue
                    png = fe.screenshot_canvas(base / f"{name}.png")
                    comment = (f"comfyui-glance preview of workflows/{name}.json sha256={workflow_sha256(name)} "
                               f"(frontend {fe.version}, ComfyUI {host_version})")
                    out, part = WORKFLOWS / f"{name}.jpg", WORKFLOWS / f".{name}.jpg.part"
                    Image.open(png).convert("RGB").save(part, "JPEG", quality=QUALITY, optimize=True,
                                                        comment=comment.encode())
                    os.replace(part, out)
                    print(f"wrote {out.relative_to(ROOT)}: {comment}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/*.json)")
    parser.add_argument("--stale", action="store_true", help="only workflows whose preview is missing or stale")
    parser.add_argument("--check", action="store_true", help="list stale previews and exit (1 if any); no browser")
    parser.add_argument("--frontend", choices=["pinned", "newest"], default="pinned",
                        help="the host's own frontend (default), or the newest (cli/frontend_cache.py)")
    args = parser.parse_args(argv)
    every = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    unknown = [n for n in args.names if n not in every]
    if unknown:
        print(f"make_previews: no workflows/{unknown[0]}.json (there are: {', '.join(every)})", file=sys.stderr)
        return 1
    names = args.names or every
    if args.check:
        old = stale(names)
        for name in old:
            print(f"stale preview: workflows/{name}.jpg (run: python cli/make_previews.py {name})")
        return 1 if old else 0
    if args.stale:
        names = stale(names)
        if not names:
            print("make_previews: every preview is up to date")
            return 0
    problems = make(names, args.frontend)
    for p in problems:
        print(f"make_previews: no preview: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
