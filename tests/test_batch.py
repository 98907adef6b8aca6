"""`cli/client.py batch`, run as a user runs it (a subprocess), over three live ComfyUI servers on loopback.

The servers share the session server's models folder (the demo kit and its LoRAs) and one output folder, as
several servers started from one ComfyUI folder do (one per GPU). Each runs torch on one thread: three servers
on a shared 2-core machine, each with a thread pool of its own, spend their time waiting on each other (10x).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import glance_server as gs
import pytest
from cli.server import ComfyServer, free_port

pytestmark = [pytest.mark.host, pytest.mark.server]

CLIENT = str(gs.ROOT / "cli" / "client.py")
CAPTIONS = ["red apple, food and drink", "banana, food and drink", "rocket, travel and places",
            "grinning face, smileys and emotion"]
SEEDS = 3  # 4 captions x 3 seeds = 12 jobs
SEED_INPUT = "Glance Phase KSampler.seed"


@pytest.fixture(scope="module")
def three_servers(live, kit_files, tmp_path_factory):
    shared_output = tmp_path_factory.mktemp("batch_shared_output")
    servers = []
    for i in range(3):
        base = tmp_path_factory.mktemp(f"batch_server{i}")
        (base / "models").symlink_to(live.models, target_is_directory=True)
        (base / "output").symlink_to(shared_output, target_is_directory=True)
        servers.append(ComfyServer(base))
    errors = []

    def start(server):
        try:
            server.start()
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")  # read by each server process when it starts
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        yield servers
    finally:
        stoppers = [threading.Thread(target=server.stop) for server in servers]  # at once: each may wait ~10 s
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()


def _history_size(url: str) -> int:
    with urllib.request.urlopen(url + "/history", timeout=30) as r:
        return len(json.loads(r.read()))


def _workflow(tmp_path, kit_files) -> tuple:
    prompt = gs.kit_prompt("glance_qwen_image", kit_files)
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(prompt))
    return prompt, path


def _batch_args(workflow, prompts, servers, out, *extra):
    return [sys.executable, CLIENT, "batch", str(workflow), "--servers", ",".join(servers), "--prompts", str(prompts),
            "--out", str(out), *extra]


def _manifest(out):
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_batch_over_three_servers_survives_a_killed_one(kit_files, three_servers, tmp_path):
    import numpy as np
    from PIL import Image

    prompt, workflow = _workflow(tmp_path, kit_files)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CAPTIONS) + "\n\n")  # a blank line is no prompt
    out = tmp_path / "out"
    urls = [s.url for s in three_servers]
    args = _batch_args(workflow, prompts, urls, out, "--prompt-input", "Prompt.text", "--seeds", str(SEEDS),
                       "--seed-input", SEED_INPUT)
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(args, stdout=so, stderr=se, cwd=str(tmp_path))
        victim = None
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            rows = _manifest(out) if (out / "manifest.jsonl").is_file() else []
            if victim is None and rows:  # the first server to finish a job dies: it has more queued, most are left
                victim = next(s for s in three_servers if s.url == rows[0]["server"])
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(30)
                done_at_kill = len(rows)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, stdout + stderr
    assert victim is not None and done_at_kill < len(CAPTIONS) * SEEDS - 4, f"killed too late ({done_at_kill} done)\n{stderr}"
    moved = re.search(rf"server {re.escape(victim.url)} set aside: .*; (\d+) of its jobs go to", stderr)
    assert moved and int(moved.group(1)) >= 1, stderr  # it had jobs queued, and they went on

    rows = _manifest(out)
    names = [r["job"] for r in rows]
    expected = {(c, s) for c in CAPTIONS for s in range(SEEDS)}
    assert len(names) == len(set(names)) == len(expected), names  # every job exactly once
    assert {(r["prompt"], r["seed"]) for r in rows} == expected
    assert all(r["server"] in urls and r["seconds"] > 0 and len(r["files"]) == 1 for r in rows)
    after_kill = rows[done_at_kill + 1:]  # (one more may have been on its way into the manifest)
    assert after_kill and all(r["server"] != victim.url for r in after_kill)
    assert len({r["server"] for r in rows}) == 3  # all three worked
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.jsonl"] + [r["files"][0] for r in rows])

    # Each image equals a single-server run of the same prompt and seed (one job alone, on a surviving server).
    single_server = gs.ComfyClient(next(s.url for s in three_servers if s is not victim))
    for r in rows:
        single = gs.apply_overrides(prompt, {"Prompt.text": r["prompt"], SEED_INPUT: r["seed"]})
        entry = single_server.run(single, timeout=120)
        want = gs.image_pixels(single_server, entry, "12")
        got = np.asarray(Image.open(out / r["files"][0]).convert("RGB"))
        assert got.shape == want.shape and np.array_equal(got, want), f"{r['job']} differs from a single-server run"
    assert len({(out / r["files"][0]).read_bytes() for r in rows}) == len(rows)  # 12 different images

    # A rerun does nothing: no prompt reaches any server, the manifest and the images stay as they are.
    survivors = [s.url for s in three_servers if s is not victim]
    before = {u: _history_size(u) for u in survivors}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "nothing to do" in rerun.stdout
    assert {u: _history_size(u) for u in survivors} == before
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_batch_reports_a_job_own_failure_once_and_a_dead_server_up_front(kit_files, three_servers, tmp_path):
    _, workflow = _workflow(tmp_path, kit_files)
    prompts = tmp_path / "presets.txt"
    prompts.write_text("qwen_image_glance\nno_such_preset\n")  # the second is refused by the host's validation
    out = tmp_path / "out"
    alive = [s.url for s in three_servers if s.alive()]
    dead = f"http://127.0.0.1:{free_port()}"
    before = {u: _history_size(u) for u in alive}
    args = _batch_args(workflow, prompts, [dead, *alive], out, "--prompt-input", "Glance Sigmas.preset",
                       "--seeds", "2", "--seed-input", SEED_INPUT)
    run = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    text = run.stdout + run.stderr
    assert run.returncode == 1, text
    assert re.search(rf"server {re.escape(dead)} set aside before the start: cannot reach it", run.stderr), text
    rows = _manifest(out)
    assert sorted((r["prompt"], r["seed"]) for r in rows) == [("qwen_image_glance", 0), ("qwen_image_glance", 1)]
    for seed in (0, 1):
        name = f"no-such-preset-[0-9a-f]{{8}}-s{seed}"
        reports = re.findall(rf"job {name} failed on \S+: (.*)", run.stderr)
        assert len(reports) == 1, text  # reported once, not retried on the other servers
        assert "no_such_preset" in reports[0] and "preset" in reports[0], reports  # the host's own message
        assert len(re.findall(rf"failed: {name}:", run.stdout)) == 1, text
    assert "2 jobs done" in run.stdout and "2 failed" in run.stdout, text
    assert sum(_history_size(u) - before[u] for u in alive) == 2  # the refused jobs never ran anywhere

    # The rerun runs only the failed ones again (they are not in the manifest) and reports them again.
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert rerun.returncode == 1 and "2 jobs to run (2 already in the manifest)" in rerun.stderr, rerun.stderr
    assert len(_manifest(out)) == 2
