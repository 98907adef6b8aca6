"""Throughput of `cli/client.py batch` with 1, 2 and 3 ComfyUI servers on this machine (demo kit, CPU).

    python benchmarks/bench_batch.py                 # 24 jobs a run, 2 interleaved repeats (a few minutes)
    python benchmarks/bench_batch.py --jobs 12 --repeats 1

Starts three real servers (cli/server.py, loopback) sharing one models folder (the demo kit) and one output
folder, as servers started from one ComfyUI folder do; each runs torch on ``--threads`` threads (default 1, the way
one server per GPU leaves the other GPUs' work to the other servers). The workflow is the shipped
glance_qwen_image (Glance Sigmas + Glance Phase KSampler, 10 steps, CFG 5) on the kit at 64x64, with the model
wired straight to the sampler (the kit ships no Glance LoRAs). Each run is the command a user types, timed from
start to exit, into a fresh output folder; server counts are interleaved (1 2 3 3 2 1 ...) so they see the same
machine load. Prints jobs/s per count, the ratios to one server, how much of the wall time the servers spent in
jobs (the host's own execution time: near 100% means no server ever waited for the client), the servers' CPU
seconds per job (what fanning out costs per job, whatever else runs on the machine), and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`
from cli import model_kit  # noqa: E402
from cli.client import ComfyClient, apply_overrides  # noqa: E402
from cli.server import ComfyServer  # noqa: E402

CAPTIONS = ["red apple, food and drink", "banana, food and drink", "rocket, travel and places",
            "grinning face, smileys and emotion", "sun, travel and places", "dog face, animals and nature",
            "red heart, smileys and emotion", "pizza, food and drink"]


def kit_workflow() -> dict:
    """glance_qwen_image on the kit, without the LoRA loader (its model output feeds the sampler directly)."""
    api = json.loads((ROOT / "workflows" / "api" / "glance_qwen_image.json").read_text())
    api = apply_overrides(api, model_kit.kit_overrides(api))
    loaders = [i for i, n in api.items() if n["class_type"] == "GlanceLoraLoader"]
    for lora_id in loaders:
        source = api.pop(lora_id)["inputs"]["model"]
        for node in api.values():
            for name, value in node["inputs"].items():
                if isinstance(value, list) and value[0] == lora_id:
                    node["inputs"][name] = list(source)
    return api


def start_servers(n: int, work: Path, threads: int) -> list[ComfyServer]:
    models = work / "models"
    model_kit.ensure_demo_models(models)
    (work / "output").mkdir(exist_ok=True)
    servers = []
    for i in range(n):
        base = work / f"server{i}"
        base.mkdir()
        (base / "models").symlink_to(models, target_is_directory=True)
        (base / "output").symlink_to(work / "output", target_is_directory=True)
        servers.append(ComfyServer(base))
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        starters = [threading.Thread(target=s.start) for s in servers]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    dead = [s.url for s in servers if not s.alive()]
    if dead:
        for s in servers:
            s.stop()
        raise SystemExit(f"servers did not start: {dead}")
    return servers


def cpu_seconds(server: ComfyServer) -> float:
    """User + system CPU time of a server process so far (Linux /proc)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=24, help="jobs per run (prompts x 3 seeds; default 24)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of 1, 2, 3 servers (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server (default 1)")
    args = ap.parse_args(argv)
    seeds = 3
    prompts = [f"{CAPTIONS[i % len(CAPTIONS)]}" + (f" #{i // len(CAPTIONS)}" if i >= len(CAPTIONS) else "")
               for i in range(-(-args.jobs // seeds))]

    work = Path(tempfile.mkdtemp(prefix="glance-bench-batch-"))
    servers = start_servers(3, work, args.threads)
    try:
        workflow = work / "wf_api.json"
        api = kit_workflow()
        workflow.write_text(json.dumps(api))
        (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
        for s in servers:  # warm-up: every server loads the kit once
            ComfyClient(s.url).run(apply_overrides(api, {"Prompt.text": "warm up"}), timeout=600)
        times: dict[int, list[float]] = {1: [], 2: [], 3: []}
        busy: dict[int, list[float]] = {1: [], 2: [], 3: []}  # the servers' time in jobs / (wall time x servers)
        cpu: dict[int, list[float]] = {1: [], 2: [], 3: []}  # the servers' CPU seconds per job
        order = [1, 2, 3, 3, 2, 1] * ((args.repeats + 1) // 2)
        order = order[:3 * args.repeats]
        for k, n in enumerate(order):
            out = work / f"out{k}"
            cmd = [sys.executable, str(ROOT / "cli" / "client.py"), "batch", str(workflow),
                   "--servers", ",".join(s.url for s in servers[:n]), "--prompts", str(work / "prompts.txt"),
                   "--prompt-input", "Prompt.text", "--seeds", str(seeds), "--seed-input", "Glance Phase KSampler.seed",
                   "--first-seed", str(1000 * (k + 1)), "--out", str(out)]  # new seeds: the host's cache never answers
            cpu_before = sum(cpu_seconds(s) for s in servers[:n])
            start = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            took = time.perf_counter() - start
            cpu_used = sum(cpu_seconds(s) for s in servers[:n]) - cpu_before
            done = len((out / "manifest.jsonl").read_text().splitlines()) if (out / "manifest.jsonl").is_file() else 0
            if run.returncode != 0 or done != len(prompts) * seeds:
                print(run.stdout, run.stderr, file=sys.stderr)
                raise SystemExit(f"run {k} with {n} server(s) failed (exit {run.returncode}, {done} jobs done)")
            times[n].append(took)
            rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            busy[n].append(sum(r["seconds"] for r in rows) / (took * n))
            cpu[n].append(cpu_used / done)
            print(f"{n} server(s): {done} jobs in {took:.2f} s ({done / took:.2f} jobs/s), servers busy "
                  f"{100 * busy[n][-1]:.0f}% of the time, {cpu[n][-1]:.3f} CPU s per job; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        jobs = len(prompts) * seeds
        rate = {n: jobs / statistics.median(t) for n, t in times.items()}
        print(f"\n{jobs} jobs a run, median of {args.repeats}, {args.threads} torch thread(s) per server, "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end")
        for n in (1, 2, 3):
            print(f"{n} server(s): {rate[n]:.2f} jobs/s, {rate[n] / rate[1]:.2f}x one server; servers busy "
                  f"{100 * statistics.median(busy[n]):.0f}% of the time; {statistics.median(cpu[n]):.3f} CPU s per job")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
