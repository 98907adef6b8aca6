"""One workflow, many prompts and seeds, over several ComfyUI servers; nothing finished is lost when one dies.

    python cli/client.py batch workflows/api/glance_qwen_image.json \\
        --servers http://gpu0:8188,http://gpu1:8188 --prompts prompts.txt --prompt-input Prompt.text \\
        --seeds 4 --seed-input "Glance Phase KSampler.seed" --out batch_out/

Jobs are prompt x seed (one line of the prompts file a prompt, blank lines skipped; seeds 0..N-1 from
``--first-seed``). Each server keeps about two jobs queued, so it never waits for the client between jobs. A
finished job's images are saved as ``OUT/<job>.png`` (``<job>_2.png``... when it saves several) and one JSON line
goes to ``OUT/manifest.jsonl`` (job, prompt, seed, server, seconds the host took, files) as it finishes; a rerun
skips the jobs the manifest has. A server that stops answering (or loses a job, or fails one for a server reason:
out of memory, interrupted there) is set aside and its jobs go to the others; a job that fails for its own reason
(the host's node_errors, an error in the graph) is reported once with the host's message. Exit 0 only when every
job is done. Standard library only, as ``client.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

if __package__:
    from . import client as cl
else:  # run through `python cli/client.py batch`: this file's folder is on sys.path
    import client as cl

MANIFEST = "manifest.jsonl"
DEPTH = 2  # jobs queued per server: one running, one waiting, so a server never idles between jobs
MAX_TRIES = 3  # a job lost with this many servers is reported failed instead of going on to the next one
POLL_S = 0.1
LOST_CHECK_S = 5.0  # how often a server's queue is asked whether it still has the jobs it has not finished


@dataclass
class Job:
    name: str
    prompt: str
    seed: int | None
    tries: int = 0
    history: list = field(default_factory=list)  # server-side losses: "url: reason"


def job_name(prompt: str, seed: int | None) -> str:
    """A file-safe name that depends only on the prompt and seed (so reordering the prompts file changes nothing)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-") or "prompt"
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" + ("" if seed is None else f"-s{seed}")


def make_jobs(prompts: list[str], seeds: list[int] | None) -> list[Job]:
    jobs, seen = [], set()
    for prompt in prompts:
        for seed in (seeds if seeds is not None else [None]):
            name = job_name(prompt, seed)
            if name not in seen:
                seen.add(name)
                jobs.append(Job(name, prompt, seed))
    return jobs


def read_manifest(out: Path) -> dict[str, dict]:
    """{job: its manifest line} of the jobs already done in ``out`` (a torn last line, from a crash, is ignored)."""
    done = {}
    path = out / MANIFEST
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("job"), str):
                done[row["job"]] = row
    return done


class ServerGone(Exception):
    """A server reason: the job goes to another server and this one is set aside."""


class JobFailed(Exception):
    """The job's own reason: reported once, not retried."""


def _is_server_reason(entry: dict) -> str | None:
    """The reason an executed-with-error prompt is the server's fault, or None when it is the job's own."""
    messages = [kind for kind, _ in entry.get("status", {}).get("messages", [])]
    err = cl.execution_error(entry)
    if not err and "execution_interrupted" in messages:
        return "the job was interrupted on the server"
    text = f"{err.get('exception_type', '')} {err.get('exception_message', '')}"
    if "OutOfMemory" in text or "out of memory" in text.lower():
        return f"out of memory: {err.get('exception_message', '').strip()[:200]}"
    return None


class Server:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.label = re.sub(r"^https?://", "", self.url)
        self.client = cl.ComfyClient(self.url)
        self.assigned: list[list] = []  # [job, prompt_id or None, submitted at]
        self.done = 0
        self.aside: str | None = None


class Batch:
    def __init__(self, workflow: dict, jobs: list[Job], servers: list[Server], out: Path, prompt_input: str,
                 seed_input: str | None, timeout: float, already_done: int, stream=None):
        self.workflow, self.servers, self.out = workflow, servers, out
        ref = seed_input and cl.find_node(workflow, seed_input.rpartition(".")[0])
        self.own_seed = workflow[ref]["inputs"][seed_input.rpartition(".")[2]] if ref else None  # jobs without --seeds
        self.prompt_input, self.seed_input, self.timeout = prompt_input, seed_input, timeout
        self.total, self.already = already_done + len(jobs), already_done
        self.pending = deque(jobs)
        self.finished: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.lock = threading.Condition()
        self.crash: BaseException | None = None  # an error of this client in a server's thread: ends the batch
        self.stream = stream or sys.stderr

    # --- shared state ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def outstanding(self) -> int:
        return len(self.pending) + sum(len(s.assigned) for s in self.servers)

    def set_aside(self, server: Server, reason: str) -> None:
        with self.lock:
            server.aside = reason
            moved = []
            for job, _, _ in reversed(server.assigned):
                job.tries += 1
                job.history.append(f"{server.url}: {reason}")
                if job.tries >= MAX_TRIES:
                    self.failed[job.name] = f"lost on {job.tries} servers: " + "; ".join(job.history)
                    self.say(f"job {job.name} failed: {self.failed[job.name]}")
                else:
                    self.pending.appendleft(job)
                    moved.append(job.name)
            server.assigned = []
            live = [s.label for s in self.servers if s.aside is None]
            self.say(f"server {server.url} set aside: {reason}; "
                     + (f"{len(moved)} of its jobs go to {', '.join(live)}" if live and moved else
                        f"{len(moved)} of its jobs wait for a server" if moved else "it had no jobs"))
            self.lock.notify_all()

    def _finish(self, server: Server, item: list, files: list[str], seconds: float) -> None:
        job = item[0]
        row = {"job": job.name, "prompt": job.prompt, "seed": self.own_seed if job.seed is None else job.seed, "server": server.url,
               "seconds": round(seconds, 3), "files": files}
        with self.lock:
            server.assigned.remove(item)
            if job.name in self.finished:  # cannot happen (one live assignment per job); never record twice
                return
            with open(self.out / MANIFEST, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.finished[job.name] = row
            server.done += 1
            done = self.already + len(self.finished)
            per_server = ", ".join(f"{s.label} {s.done}" + (" (set aside)" if s.aside else "") for s in self.servers)
            self.say(f"[{done}/{self.total}] {job.name} on {server.label} in {seconds:.2f} s | {per_server}")
            self.lock.notify_all()

    def _fail(self, server: Server, item: list, message: str) -> None:
        with self.lock:
            server.assigned.remove(item)
            self.failed[item[0].name] = message
            self.say(f"job {item[0].name} failed on {server.label}: {message}")
            self.lock.notify_all()

    # --- one server's loop ----------------------------------------------------------------------------

    def job_prompt(self, job: Job) -> dict:
        overrides = {self.prompt_input: job.prompt}
        if job.seed is not None:
            overrides[self.seed_input] = job.seed
        prompt = cl.apply_overrides(self.workflow, overrides)
        for node in prompt.values():  # servers sharing one output folder must never write the same file name
            prefix = node.get("inputs", {}).get("filename_prefix")
            if isinstance(prefix, str):
                node["inputs"]["filename_prefix"] = f"{prefix}-{job.name}"
        return prompt

    def _submit(self, server: Server, item: list) -> None:
        try:
            item[1] = server.client.queue(self.job_prompt(item[0]))
            item[2] = time.monotonic()
        except cl.PromptError as e:
            self._fail(server, item, str(e).replace("\n", " |"))

    def _save(self, server: Server, job: Job, entry: dict) -> list[str]:
        images = [image for _, output in sorted(entry.get("outputs", {}).items(), key=lambda kv: kv[0])
                  for image in output.get("images", []) if image.get("type", "output") == "output"]
        files = []
        for k, image in enumerate(images, 1):
            data = server.client.view(image["filename"], image.get("subfolder", ""), "output")
            name = job.name + ("" if k == 1 else f"_{k}") + (Path(image["filename"]).suffix or ".png")
            cl.write_whole(self.out / name, data)
            files.append(name)
        return files

    def _poll(self, server: Server, item: list, check_lost: bool) -> None:
        job, prompt_id, submitted = item
        entry = server.client.history(prompt_id)
        if entry is None and check_lost:
            queue = server.client.get_json("/queue")
            queued = {row[1] for key in ("queue_running", "queue_pending") for row in queue.get(key, []) if len(row) > 1}
            if prompt_id not in queued:
                entry = server.client.history(prompt_id)  # it may have finished in between
                if entry is None:
                    raise ServerGone(f"it lost prompt {prompt_id} (restarted?)")
        if entry is None:
            if time.monotonic() - submitted > self.timeout:
                self._fail(server, item, f"did not finish within {self.timeout:g} s (prompt {prompt_id}; "
                                         f"raise --timeout if the job needs longer)")
            return
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            reason = _is_server_reason(entry)
            if reason:
                raise ServerGone(reason)
            self._fail(server, item, cl.describe_failure(entry))
        elif status.get("completed"):
            seconds = cl.execution_seconds(entry)  # the host's own time for the job; else since it was queued
            self._finish(server, item, self._save(server, job, entry), seconds or time.monotonic() - submitted)

    def run_server(self, server: Server) -> None:
        next_lost_check = time.monotonic() + LOST_CHECK_S
        while True:
            with self.lock:
                if server.aside or self.crash:
                    return
                new = []
                while len(server.assigned) < DEPTH and self.pending:
                    item = [self.pending.popleft(), None, time.monotonic()]
                    server.assigned.append(item)
                    new.append(item)
                if not server.assigned:
                    if self.outstanding() == 0:
                        return
                    self.lock.wait(1.0)  # another server may lose jobs yet
                    continue
            try:
                for item in new:
                    self._submit(server, item)
                check_lost = time.monotonic() >= next_lost_check
                if check_lost:
                    next_lost_check = time.monotonic() + LOST_CHECK_S
                for item in list(server.assigned):
                    if item[1] is not None:
                        self._poll(server, item, check_lost)
            except ServerGone as e:
                self.set_aside(server, str(e))
                return
            except (OSError, json.JSONDecodeError, http.client.HTTPException) as e:
                # The server stopped answering (connection, timeout) or answered what is not ComfyUI's JSON: its jobs
                # move on. Anything else is a fault of this client, not of the server: the batch stops with it.
                reason = getattr(e, "reason", None) or e
                self.set_aside(server, f"{type(e).__name__}: {reason}")
                return
            except BaseException as e:
                with self.lock:
                    self.crash = self.crash or e
                    self.lock.notify_all()
                return
            time.sleep(POLL_S)

    def run(self) -> None:
        threads = [threading.Thread(target=self.run_server, args=(s,), daemon=True) for s in self.servers if not s.aside]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.crash is not None:
            raise self.crash


# --- checks before any job is queued ---------------------------------------------------------------------

def _input_spec(info: dict, name: str):
    for section in ("required", "optional"):
        spec = info.get("input", {}).get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


def server_problem(server: Server, workflow: dict, skip: set[tuple[str, str]]) -> str | None:
    """Why this server cannot run the workflow (a node type or a file it does not have), or None. Asks
    ``/object_info/<type>`` of each node type, which also proves the URL is a ComfyUI."""
    infos = {}
    for cls in sorted({node["class_type"] for node in workflow.values()}):
        answer = server.client.get_json(f"/object_info/{urllib.parse.quote(cls)}")
        if not isinstance(answer, dict):
            raise cl.NotComfyError(f"{server.url} answered GET /object_info/{cls} with {str(answer)[:60]}: "
                                   f"is it a ComfyUI server? check the URL")
        if cls not in answer:
            return f"it has no node type {cls} (install the custom node that provides it there)"
        infos[cls] = answer[cls]
    for node_id, node in workflow.items():
        for name, value in node.get("inputs", {}).items():
            if (node_id, name) in skip or isinstance(value, list):
                continue
            spec = _input_spec(infos[node["class_type"]], name)
            if not spec:
                continue
            options = spec[0] if isinstance(spec[0], list) else (
                (spec[1] or {}).get("options") if spec[0] == "COMBO" and len(spec) > 1 else None)
            if isinstance(options, list) and value not in options:
                title = node.get("_meta", {}).get("title", node_id)
                return f"'{title}.{name}' = {value!r} is not one of its options (a model file missing there?)"
    return None


def _parse_servers(text: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    bad = [u for u in urls if not re.match(r"^https?://[^/\s]+", u)]
    if not urls or bad:
        raise ValueError(f"--servers {text!r}: give comma-separated URLs like http://127.0.0.1:8188,http://10.0.0.2:8188")
    if len(set(urls)) != len(urls):
        raise ValueError(f"--servers {text!r} names a server twice; list each once")
    return urls


def _input_ref(workflow: dict, ref: str, option: str, want) -> tuple[str, str]:
    """(node id, input name) of ``Title.input`` for ``option``; its current value must be a ``want``."""
    title, sep, name = ref.rpartition(".")
    if not sep or not title or not name:
        raise ValueError(f"{option} {ref!r}: write it as Title.input, e.g. \"Prompt.text\"")
    try:
        node_id = cl.find_node(workflow, title)
    except KeyError as e:
        raise ValueError(f"{option} {ref!r}: {e.args[0]}") from None
    inputs = workflow[node_id].get("inputs", {})
    if name not in inputs:
        raise ValueError(f"{option} {ref!r}: node '{title}' has no input '{name}'; its inputs: {', '.join(sorted(inputs))}")
    current = inputs[name]
    if not isinstance(current, want) or isinstance(current, bool):
        kind = "text" if want is str else "a whole number"
        raise ValueError(f"{option} {ref!r}: that input holds {current!r}, not {kind}; name the node input that takes "
                         f"{'the prompt' if want is str else 'the seed'}")
    return node_id, name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="client.py batch", description=(
        "Run an API-format workflow for every prompt (x seed) over several ComfyUI servers; saves OUT/<job>.png and "
        "OUT/manifest.jsonl; a rerun skips what the manifest has. Exit 0 only when every job is done."))
    ap.add_argument("workflow", type=Path, help="API-format workflow JSON (e.g. workflows/api/glance_qwen_image.json)")
    ap.add_argument("--servers", required=True, help="comma-separated ComfyUI URLs, one server per GPU or machine")
    ap.add_argument("--prompts", type=Path, required=True, help="text file, one prompt a line (blank lines skipped)")
    ap.add_argument("--prompt-input", required=True, metavar="TITLE.INPUT", help="the input each prompt goes to, e.g. Prompt.text")
    ap.add_argument("--seeds", type=int, default=None, metavar="N", help="N seeds per prompt (default: the workflow's own seed)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first of the N seeds (default 0)")
    ap.add_argument("--seed-input", metavar="TITLE.INPUT", help="the seed input, e.g. \"Glance Phase KSampler.seed\"")
    ap.add_argument("--out", type=Path, required=True, help="folder for the images and manifest.jsonl")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="TITLE.INPUT=VALUE",
                    help="override an input for every job (repeatable); VALUE @file uploads a local image to every server")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may take from queueing (default 3600)")
    args = ap.parse_args(argv)

    try:
        urls = _parse_servers(args.servers)
        if not args.timeout > 0:
            raise ValueError(f"--timeout {args.timeout:g}: give a number of seconds above 0")
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds {args.seeds}: give how many seeds per prompt (1 or more)")
        if args.seeds is not None and not args.seed_input:
            raise ValueError("--seeds needs --seed-input TITLE.INPUT, the node input the seed goes to")
        workflow = cl.read_workflow(args.workflow)
        prompt_ref = _input_ref(workflow, args.prompt_input, "--prompt-input", str)
        seed_ref = _input_ref(workflow, args.seed_input, "--seed-input", int) if args.seed_input else None
        if not args.prompts.is_file():
            raise ValueError(f"--prompts {args.prompts}: no such file; give a text file with one prompt a line")
        try:
            prompts = [line.strip() for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"--prompts {args.prompts} is not UTF-8 text; give a text file with one prompt a line") from None
        if not prompts:
            raise ValueError(f"--prompts {args.prompts} has no prompts; write one prompt a line")
        cl.check_out_dir(args.out)
        cl.check_upload_files(args.overrides)
        workflow = cl.apply_overrides(workflow, [o for o in args.overrides if "=@" not in o])
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    if not any(isinstance(n.get("inputs", {}).get("filename_prefix"), str) for n in workflow.values()):
        print("warning: the workflow has no node that saves images (Save Image): jobs will save no files", file=sys.stderr)

    seeds = None if args.seeds is None else list(range(args.first_seed, args.first_seed + args.seeds))
    all_jobs = make_jobs(prompts, seeds)
    done = read_manifest(args.out)
    jobs = [j for j in all_jobs if j.name not in done]
    if not jobs:
        print(f"all {len(all_jobs)} jobs are in {args.out / MANIFEST} already: nothing to do")
        return 0
    print(f"{len(jobs)} jobs to run ({len(all_jobs) - len(jobs)} already in the manifest) on {len(urls)} server(s)",
          file=sys.stderr)

    servers = [Server(u) for u in urls]
    skip = {prompt_ref} | ({seed_ref} if seed_ref else set())
    for server in servers:
        try:
            problem = server_problem(server, workflow, skip)
        except cl.NotComfyError as e:
            problem = str(e)
        except urllib.error.URLError as e:
            problem = f"cannot reach it: {e.reason}"
        except (OSError, ValueError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem:
            server.aside = problem
            print(f"server {server.url} set aside before the start: {problem}", file=sys.stderr)
    live = [s for s in servers if not s.aside]
    if live and any("=@" in o for o in args.overrides):
        try:
            workflow = _apply_uploads(workflow, [o for o in args.overrides if "=@" in o], live)
        except (KeyError, ValueError) as e:
            print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
            return 1
        live = [s for s in servers if not s.aside]
    if not live:
        print(f"error: no server can run this workflow ({len(jobs)} jobs not run); fix what is said above", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    batch = Batch(workflow, jobs, servers, args.out, args.prompt_input, args.seed_input, args.timeout, len(all_jobs) - len(jobs))
    start = time.monotonic()
    try:
        batch.run()
    except KeyboardInterrupt:
        print(f"interrupted: {len(batch.finished)} jobs finished and are in {args.out / MANIFEST}; rerun the same "
              f"command to run the rest (jobs still queued on the servers run there, unrecorded)", file=sys.stderr)
        return 130
    took = time.monotonic() - start
    not_run = [j.name for j in jobs if j.name not in batch.finished and j.name not in batch.failed]
    print(f"{len(batch.finished)} jobs done in {took:.1f} s ({len(batch.finished) / took:.2f} jobs/s), "
          f"{len(all_jobs) - len(jobs)} were done before, {len(batch.failed)} failed, {len(not_run)} not run; "
          + ", ".join(f"{s.label}: {s.done}" + (f" (set aside: {s.aside})" if s.aside else "") for s in servers))
    for name, message in batch.failed.items():
        print(f"failed: {name}: {message}")
    if not_run:
        print(f"not run (no server left): {', '.join(not_run)}; rerun the same command to finish them")
    return 0 if not batch.failed and not not_run else 1


def _apply_uploads(workflow: dict, overrides: list[str], servers: list[Server]) -> dict:
    """``@file`` overrides: the file goes to every server (which must all give it the same name)."""
    def upload(path: Path) -> str:
        names = set()
        for server in servers:
            if server.aside:
                continue
            try:
                names.add(server.client.upload_image(path))
            except (OSError, ValueError) as e:
                server.aside = f"uploading {path} failed: {e}"
                print(f"server {server.url} set aside before the start: {server.aside}", file=sys.stderr)
        if len(names) > 1:
            raise ValueError(f"the servers stored {path} under different names ({', '.join(sorted(names))}); "
                             f"upload it by hand and give its name instead of @{path}")
        return names.pop() if names else path.name

    return cl.apply_overrides(workflow, overrides, upload=upload)
