"""Queue an API-format workflow on a running ComfyUI server, override inputs by node title, wait, save outputs.

    python cli/client.py workflows/api/glance_qwen_image.json --server http://127.0.0.1:8188 \\
        --set "Prompt.text=a lighthouse at dusk" --set "Glance Phase KSampler.seed=7" --out outputs/

``--set "Title.input=value"`` changes the input ``input`` of the node titled ``Title`` (its ``_meta.title``;
a node id works too). The value keeps the type of the value it replaces (JSON is accepted: ``[1, 2]``,
``true``); ``@path`` uploads a local image to the server's input folder and uses its name (for Load Image).
Progress comes from the server's websocket (/ws); outputs are fetched through GET /view. Standard library only.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

FINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def write_whole(path: Path, data: bytes) -> Path:
    """``data`` under ``path``, whole or not at all (a temporary file beside it takes the name in one step). This
    client runs without the pack, so it does not import the pack's writer (schedules/atomic_file.py)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class PromptError(RuntimeError):
    """The server refused a prompt (validation) or failed while running it."""

    def __init__(self, message: str, error: dict | None = None, node_errors: dict | None = None,
                 prompt_id: str | None = None):
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}
        self.prompt_id = prompt_id  # set when the server queued the valid part of the workflow anyway


class PromptTimeout(TimeoutError):
    """A prompt did not finish within the time given (the server may still be running it)."""


class NotComfyError(ConnectionError):
    """The URL answers, but not as ComfyUI does (not JSON, or JSON without what ComfyUI sends)."""


# --- overrides by title -------------------------------------------------------------------------------

def find_node(prompt: dict, title: str) -> str:
    """The id of the node titled ``title`` (or with that id); an error lists the titles when there is none."""
    matches = [nid for nid, node in prompt.items() if node.get("_meta", {}).get("title") == title]
    if len(matches) > 1:
        raise KeyError(f"{len(matches)} nodes are titled '{title}' (ids {', '.join(matches)}): use a node id instead.")
    if matches:
        return matches[0]
    if title in prompt:
        return title
    titles = sorted({n.get("_meta", {}).get("title", "") for n in prompt.values()} - {""})
    raise KeyError(f"no node titled '{title}'; titles in this workflow: {', '.join(titles)}")


def parse_value(text: str, current):
    """``text`` as the type of ``current`` (int, float, bool, str), or JSON when ``current`` is None."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"takes true or false, not '{text}'")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"takes a whole number, not '{text}'") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"takes a number, not '{text}'") from None
    if isinstance(current, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(prompt: dict, overrides: dict | list, upload=None) -> dict:
    """A copy of ``prompt`` with ``{"Title.input": value}`` (or ``["Title.input=value", ...]``) applied.

    String values of a list are parsed to the type of the value they replace. ``upload(path) -> name`` is
    called for values starting with ``@``.
    """
    prompt = copy.deepcopy(prompt)
    items = overrides.items() if isinstance(overrides, dict) else (_split_assignment(s) for s in overrides)
    for key, value in items:
        title, sep, name = key.rpartition(".")
        if not sep or not title or not name:
            raise ValueError(f"'{key}': write overrides as Title.input=value, e.g. \"Prompt.text=a cat\"")
        node = prompt[find_node(prompt, title)]
        inputs = node.setdefault("inputs", {})
        if name not in inputs:
            raise KeyError(f"'{key}': node '{title}' has no input '{name}'; its inputs: {', '.join(sorted(inputs))}")
        current = inputs[name]
        if isinstance(current, list) and len(current) == 2 and isinstance(current[0], str):
            raise ValueError(f"'{key}': that input is connected to node {current[0]}; change the source node instead.")
        if isinstance(value, str) and value.startswith("@") and upload is not None:
            value = upload(Path(value[1:]))
        elif isinstance(value, str) and not isinstance(overrides, dict):
            try:
                value = parse_value(value, current)
            except ValueError as e:
                raise ValueError(f"'{key}={value}': input '{name}' of '{title}' {e}; "
                                 f"e.g. \"{key}={json.dumps(current)}\" (its value in the workflow)") from None
        inputs[name] = value
    return prompt


def _split_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"'{text}': write overrides as Title.input=value, e.g. \"Prompt.text=a cat\"")
    return key.strip(), value


# --- a minimal websocket reader (RFC 6455, text frames, client side) -----------------------------------

class WebSocket:
    def __init__(self, url: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + ("?" + parts.query if parts.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head.splitlines()[0]!r}")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self, timeout: float | None = None):
        """The next message: str (text), bytes (binary), or None on timeout."""
        self.sock.settimeout(timeout)
        message, first_opcode = b"", None
        while True:
            try:
                b0, b1 = self._read(2)
            except (socket.timeout, TimeoutError):
                return None
            self.sock.settimeout(None)  # a frame has started: read it whole
            opcode, fin, n = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                first_opcode, message = opcode, payload
            else:
                message += payload
            if fin:
                return message.decode("utf-8") if first_opcode == 0x1 else message
            self.sock.settimeout(timeout)

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        self.sock.close()


# --- the HTTP API ---------------------------------------------------------------------------------------

class ComfyClient:
    def __init__(self, url: str = "http://127.0.0.1:8188", client_id: str | None = None):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60.0):
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()

    def _decode(self, method: str, path: str, raw: bytes, status: int = 200):
        try:
            return json.loads(raw)
        except ValueError:
            raise NotComfyError(f"{self.url} answered {method} {path.split('?')[0]} (HTTP {status}) with something that is "
                                f"not JSON ({raw[:40]!r}): is it a ComfyUI server? check the URL") from None

    def get_json(self, path: str):
        return self._decode("GET", path, self._request(path))

    def post_json(self, path: str, payload: dict):
        return self._decode("POST", path, self._request(path, json.dumps(payload).encode(),
                                                         {"Content-Type": "application/json"}) or b"{}")

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict, partial_ok: bool = False) -> str:
        """POST /prompt; returns the prompt id. Raises PromptError with the host's node_errors if refused.

        When only some output nodes are valid, the host queues those and answers with node_errors for the
        rest; that is an error here too (the valid part still runs on the server) unless ``partial_ok``.
        """
        try:
            answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            body = self._decode("POST", "/prompt", e.read() or b"{}", e.code)
            if not isinstance(body, dict) or not isinstance(body.get("error", {}), (dict, str)):
                raise NotComfyError(f"{self.url} refused POST /prompt (HTTP {e.code}) without ComfyUI's error fields: "
                                    f"is it a ComfyUI server? check the URL") from None
            error, node_errors = body.get("error", {}), body.get("node_errors", {})
            if isinstance(error, str):
                error = {"message": error}
            raise PromptError(describe_refusal(error, node_errors, prompt), error, node_errors) from None
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise NotComfyError(f"{self.url} answered POST /prompt without a prompt_id ({str(answer)[:60]}): "
                                f"is it a ComfyUI server? check the URL")
        if answer.get("node_errors") and not partial_ok:
            error = {"type": "prompt_outputs_failed_validation",
                     "message": f"some outputs failed validation; the server runs the others as prompt {answer['prompt_id']}"}
            raise PromptError(describe_refusal(error, answer["node_errors"], prompt), error, answer["node_errors"],
                              prompt_id=answer["prompt_id"])
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 3600.0, on_event=None, ws: WebSocket | None = None) -> dict:
        """Block until ``prompt_id`` has finished; returns its /history entry, raises PromptError on failure.

        ``on_event(type, data)`` receives the server's websocket messages for this prompt (progress etc.)
        when ``ws`` is given; /history is polled in any case, so a lost websocket costs only the progress.
        """
        deadline = time.monotonic() + timeout
        next_poll = 0.0
        while time.monotonic() < deadline:
            if ws is not None:
                try:
                    message = ws.recv(timeout=0.5)
                except (ConnectionError, OSError):
                    ws = None
                    message = None
                if isinstance(message, str):
                    event = json.loads(message)
                    kind, data = event.get("type"), event.get("data") or {}
                    if data.get("prompt_id") in (None, prompt_id) and on_event is not None:
                        on_event(kind, data)
                    if data.get("prompt_id") == prompt_id and (kind in FINAL_EVENTS or kind == "executing" and data.get("node") is None):
                        next_poll = 0.0  # finished: look at /history now
            else:
                time.sleep(0.2)
            if time.monotonic() < next_poll:
                continue
            next_poll = time.monotonic() + 0.2
            entry = self.history(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "error":
                raise PromptError(describe_failure(entry), execution_error(entry), prompt_id=prompt_id)
            if status.get("completed"):
                return entry
        raise PromptTimeout(f"prompt {prompt_id} did not finish within {timeout:g} s")

    def connect_ws(self) -> WebSocket | None:
        try:
            return WebSocket(self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}")
        except OSError:
            return None

    def run(self, prompt: dict, timeout: float = 3600.0, on_event=None) -> dict:
        """Queue ``prompt``, wait for it; returns the /history entry plus ``prompt_id`` and ``seconds``."""
        ws = self.connect_ws()  # progress for on_event, and the finish without waiting for the next poll
        try:
            start = time.monotonic()
            prompt_id = self.queue(prompt)
            entry = self.wait(prompt_id, timeout, on_event, ws)
            entry = dict(entry, prompt_id=prompt_id, seconds=time.monotonic() - start,
                         execution_seconds=execution_seconds(entry))
            return entry
        finally:
            if ws is not None:
                ws.close()

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        return self._request(f"/view?{query}")

    def save_outputs(self, entry: dict, out_dir: Path, kinds=("output",)) -> list[Path]:
        """Download the images an executed prompt produced (by default only saved ones, not previews)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        saved = []
        for node_output in entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                if image.get("type", "output") not in kinds:
                    continue
                data = self.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
                saved.append(write_whole(out_dir / Path(image["filename"]).name, data))
        return saved

    def upload_image(self, path: Path, overwrite: bool = True) -> str:
        """POST /upload/image (multipart); returns the name to give Load Image."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n".encode(), path.read_bytes(), b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\n{str(overwrite).lower()}\r\n".encode(),
            f"--{boundary}--\r\n".encode(),
        ])
        answer = json.loads(self._request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


def execution_error(entry: dict) -> dict:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def execution_seconds(entry: dict) -> float | None:
    """Server-side time from execution_start to execution_success (None if the messages are missing)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    if stamps.get("execution_start") and stamps.get("execution_success"):
        return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
    return None


def describe_refusal(error: dict, node_errors: dict, prompt: dict) -> str:
    lines = [f"the server refused the workflow: {error.get('message', 'invalid prompt')} {error.get('details', '')}".rstrip()]
    for node_id, info in node_errors.items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title", info.get("class_type", node_id))
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} '{title}': {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def describe_failure(entry: dict) -> str:
    err = execution_error(entry)
    return (f"node {err.get('node_id')} ({err.get('node_type')}) failed: {err.get('exception_type', '')}: "
            f"{err.get('exception_message', '').strip()}")


class ProgressPrinter:
    """Prints one line per node and a progress bar per sampling/training loop."""

    def __init__(self, prompt: dict, stream=None):
        self.prompt, self._stream = prompt, stream

    @property
    def stream(self):
        return self._stream or sys.stderr

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "executing" and data.get("node") is not None:
            node = self.prompt.get(str(data["node"]), {})
            print(f"\r  running {node.get('_meta', {}).get('title', node.get('class_type', data['node']))}",
                  file=self.stream, flush=True)
        elif kind == "progress":
            value, total = data.get("value", 0), data.get("max", 1) or 1
            if self.stream.isatty():
                bar = "#" * int(30 * value / total)
                print(f"\r    [{bar:<30}] {value}/{total}", end="\n" if value >= total else "", file=self.stream, flush=True)
            elif value >= total:
                print(f"    {value}/{total} done", file=self.stream, flush=True)
        elif kind == "execution_cached" and data.get("nodes"):
            print(f"  cached: {len(data['nodes'])} node(s)", file=self.stream, flush=True)


def read_workflow(path: Path) -> dict:
    """The API-format workflow in ``path``; ValueError naming the file and what to give instead."""
    hint = "give an API-format workflow JSON (e.g. workflows/api/glance_qwen_image.json)"
    if not path.is_file():
        raise ValueError(f"workflow {path}: {'is a folder' if path.is_dir() else 'no such file'}; {hint}")
    try:
        prompt = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"workflow {path} is not a text file; {hint}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"workflow {path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); {hint}") from None
    if isinstance(prompt, dict) and "nodes" in prompt and "links" in prompt:
        raise ValueError(f"{path} is a UI-format workflow; queue its API twin (workflows/api/<name>.json), "
                         f"or export it from ComfyUI with 'Export (API)'")
    if not isinstance(prompt, dict) or not prompt or not all(isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise ValueError(f"workflow {path} is JSON but not an API-format workflow ({{id: {{class_type, inputs}}}}); {hint}")
    return prompt


def check_upload_files(overrides: list[str]) -> None:
    """Every ``@file`` of ``--set`` overrides exists (checked before anything is sent)."""
    for text in overrides:
        key, sep, value = text.partition("=")
        if sep and value.startswith("@") and not Path(value[1:]).is_file():
            raise ValueError(f"--set '{text}': no file {value[1:]} to upload; give the path of a local image after @")


def check_out_dir(out: Path) -> None:
    """``--out`` is a folder or can become one."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder; give a folder for the images")
            return


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:
        if __package__:
            from .batch import main as batch_main
        else:  # run as a script: this file's folder is on sys.path
            from batch import main as batch_main
        return batch_main(argv[1:])
    ap = argparse.ArgumentParser(description="Queue an API-format ComfyUI workflow and save its outputs. "
                                             "`client.py batch -h`: many prompts and seeds over several servers.")
    ap.add_argument("workflow", type=Path, help="API-format workflow JSON (e.g. workflows/api/glance_qwen_image.json)")
    ap.add_argument("--server", default=os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"), help="ComfyUI URL")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="TITLE.INPUT=VALUE",
                    help="override an input by node title (repeatable); VALUE @file uploads a local image")
    ap.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the saved images (default: outputs)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the result")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)

    client = ComfyClient(args.server)
    try:
        if not args.timeout > 0:
            raise ValueError(f"--timeout {args.timeout:g}: give a number of seconds above 0")
        prompt = read_workflow(args.workflow)
        check_out_dir(args.out)
        check_upload_files(args.overrides)
        prompt = apply_overrides(prompt, args.overrides, upload=client.upload_image)
        entry = client.run(prompt, args.timeout, on_event=None if args.quiet else ProgressPrinter(prompt))
        saved = client.save_outputs(entry, args.out)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    except PromptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PromptTimeout as e:
        print(f"error: {e} on {args.server}; give it more time with --timeout SECONDS "
              f"(the server may still be running it)", file=sys.stderr)
        return 1
    except NotComfyError as e:
        print(f"error: {e} (--server {args.server})", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"error: cannot reach ComfyUI at {args.server}: {e.reason}; start it or check --server", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e} (server {args.server}); check --server and that the server is running", file=sys.stderr)
        return 1
    took = entry["execution_seconds"] or entry["seconds"]
    print(f"done in {took:.2f} s (prompt {entry['prompt_id']})")
    for path in saved:
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
