"""cli/client.py's command line on bad input, as a user sees it: one line naming the input and the fix, exit 1,
no traceback. Each case runs the client as a subprocess."""
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import glance_server as gs
import pytest
from cli.server import free_port

CLIENT = str(gs.ROOT / "cli" / "client.py")
TINY = {"1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4}, "_meta": {"title": "Sampler"}}}


def run_client(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, CLIENT, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd))


def one_error_line(result, *fragments):
    """The run failed with exit 1 and a single `error:` line that holds every fragment; returns that line."""
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny_api.json"
    path.write_text(json.dumps(TINY))
    return path


def test_missing_workflow(tmp_path):
    one_error_line(run_client("no_such_workflow.json", "--server", f"http://127.0.0.1:{free_port()}", cwd=tmp_path),
                   "no_such_workflow.json", "no such file", "API-format workflow JSON")


def test_workflow_that_is_not_json(tmp_path):
    (tmp_path / "broken.json").write_text('{"1": {"class_type": ')
    one_error_line(run_client("broken.json", "--server", f"http://127.0.0.1:{free_port()}", cwd=tmp_path),
                   "broken.json", "is not JSON", "line 1", "API-format workflow JSON")


def test_missing_upload_file(tiny, tmp_path):
    one_error_line(run_client(tiny, "--server", f"http://127.0.0.1:{free_port()}", "--set", "Sampler.seed=@gone.png",
                              cwd=tmp_path),
                   "Sampler.seed=@gone.png", "no file gone.png", "path of a local image")


def test_value_of_the_wrong_type_names_the_input(tiny, tmp_path):
    one_error_line(run_client(tiny, "--server", f"http://127.0.0.1:{free_port()}", "--set", "Sampler.seed=abc",
                              cwd=tmp_path),
                   "Sampler.seed=abc", "input 'seed' of 'Sampler'", "whole number", "Sampler.seed=1")


class _NotComfy(http.server.BaseHTTPRequestHandler):
    """A web server that is not ComfyUI: an HTML page for every request."""

    def _page(self):
        body = b"<html><body>hello, this is not ComfyUI</body></html>"
        if "Content-Length" in self.headers:
            self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args):
        pass


def test_server_that_is_not_comfyui(tiny, tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotComfy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        result = run_client(tiny, "--server", url, "--quiet", cwd=tmp_path)
    finally:
        httpd.shutdown()
    line = one_error_line(result, url, "not JSON", "is it a ComfyUI server?")
    assert "Expecting value" not in line


@pytest.mark.host
@pytest.mark.server
def test_out_that_is_a_file_fails_before_queueing(live, kit_files, tmp_path):
    workflow = tmp_path / "wf_api.json"
    workflow.write_text(json.dumps(gs.kit_prompt("stock_two_sampler_baseline", kit_files)))
    (tmp_path / "afile").write_text("not a folder")
    queued = len(live.client.get_json("/history"))
    one_error_line(run_client(workflow, "--server", live.server.url, "--out", tmp_path / "afile" / "sub", "--quiet",
                              cwd=tmp_path),
                   "--out", "afile is a file", "give a folder")
    assert len(live.client.get_json("/history")) == queued  # nothing ran


@pytest.mark.host
@pytest.mark.server
def test_timeout_names_the_time_given(live, kit_files, tmp_path):
    workflow = tmp_path / "wf_api.json"
    slow = gs.apply_overrides(gs.kit_prompt("stock_two_sampler_baseline", kit_files),
                              {"Slow phase.steps": 5000, "Fast phase.steps": 5000})  # minutes on a CPU
    workflow.write_text(json.dumps(slow))
    result = run_client(workflow, "--server", live.server.url, "--timeout", 0.5, "--quiet", cwd=tmp_path)
    try:
        one_error_line(result, "did not finish within 0.5 s", live.server.url, "--timeout")
    finally:  # do not leave the slow prompt running for the other tests
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            queue = live.client.get_json("/queue")
            if not queue.get("queue_running") and not queue.get("queue_pending"):
                break
            live.client.post_json("/interrupt", {})
            time.sleep(0.2)


def _batch_of_one_job(queue):
    """A batch of one job over one server whose ``queue`` call is ``queue`` (no server is reached)."""
    import io

    from cli import batch

    server = batch.Server("http://127.0.0.1:9")
    server.client.queue = queue
    workflow = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}, "_meta": {"title": "Prompt"}}}
    jobs = batch.make_jobs(["an apple"], None)
    return batch.Batch(workflow, jobs, [server], Path("/nonexistent"), "Prompt.text", None, 5.0, 0,
                       stream=io.StringIO()), server


def test_batch_sets_aside_a_server_that_stops_answering_but_stops_on_its_own_fault():
    def refused(prompt):
        raise ConnectionRefusedError("connection refused")

    run, server = _batch_of_one_job(refused)
    run.run()
    assert server.aside and "ConnectionRefusedError" in server.aside  # the server's fault: set aside, job kept
    assert len(run.pending) == 1 and run.pending[0].tries == 1  # its job waits for another server

    def client_bug(prompt):
        raise KeyError("a fault of the client, not of the server")

    run, server = _batch_of_one_job(client_bug)
    with pytest.raises(KeyError, match="a fault of the client"):
        run.run()
    assert server.aside is None  # not blamed on the server
