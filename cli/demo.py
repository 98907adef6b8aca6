"""The main job, one command: train Glance Slow/Fast LoRAs from one image on a real ComfyUI, sample, compare.

    python cli/demo.py [--workdir DIR] [--out DIR] [--caption EMOJI_CAPTION | --image PNG --caption TEXT]

Starts your ComfyUI (found like the tests find it: COMFYUI_PATH, ~/comfy/ComfyUI, or the ComfyUI this pack
is installed in) headless on loopback with this pack, in a work folder of its own. It writes the small demo
model kit there when missing (cli/model_kit.py: an SD3-family MMDiT trained on Google's emoji, a CLIP-L and a
VAE) and the training image (one emoji of the kit's training set), then queues the shipped workflows through
cli/client.py with their inputs overridden by node title:

1. workflows/api/glance_train_and_sample.json: trains the Slow- and the Fast-LoRA from the one image and its
   caption, and samples with them (Glance Phase KSampler, 5 slow + 5 fast steps);
2. the same graph for each prompt (the trained LoRAs are cached): Glance, 10 steps;
3. workflows/api/stock_two_sampler_baseline.json with LoRA strength 0: the base model the usual way, 10 steps
   and 50 steps (the speed baseline), the converged picture (dpmpp_2m, 200 steps: the reference every PSNR is
   measured against), and 10 steps of the best of the host's stock schedulers (each tried with Euler on the
   held-out captions against the reference; the one with the highest mean PSNR is the row);
4. workflows/api/glance_fit_and_distill.json from the training caption alone (no image): Glance Fit Schedule
   picks 5 + 5 steps of the model's own 100-step kl_optimal schedule, Glance Distill Experts trains a Slow and a Fast expert
   against the model's 100-step kl_optimal runs, on the states Euler visits on that schedule; sampled with the experts, and with
   the base model on the fitted schedule.

Prompts: the training caption, two other captions the base model was trained on, and captions held out from
everything (never seen by the base model or the LoRAs). Each prompt runs once untimed (text encoding) and
once timed (the converged picture once, untimed), with the same seed for every variant. It saves a labelled grid
and prints each variant's time and its fidelity (PSNR to the converged picture). The server it started is stopped at the end, on Ctrl-C, on SIGTERM
and on errors.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import emoji_data, model_kit  # noqa: E402
from cli.client import ComfyClient, PromptError, ProgressPrinter, apply_overrides  # noqa: E402
from cli.server import ComfyServer, ServerError, find_comfyui  # noqa: E402

WORKFLOWS = ROOT / "workflows"
DEFAULT_WORKDIR = Path.home() / ".cache" / "comfyui-glance" / "demo"
TRAIN_CAPTION = "red apple, food and drink"
OTHER_TRAINING = ("grinning face, smileys and emotion", "pink heart, smileys and emotion")
REFERENCE_STEPS, PLAIN_STEPS, GLANCE_STEPS = 50, 10, (5, 5)
CONVERGED_SAMPLER, CONVERGED_STEPS = "dpmpp_2m", 200  # 46.6 dB from 100 steps (benchmarks/repro/out/schedules.json)
VARIANTS = ("glance", "fitted", "distilled", "plain", "reference", "converged", "best_stock")  # in the order they run
SHOWN = ("glance", "fitted", "distilled", "plain", "best_stock", "reference")  # in the order the report lists them
LABELS = {"real": "real emoji", "reference": f"base, {REFERENCE_STEPS} steps", "plain": f"base, {PLAIN_STEPS} steps",
          "converged": f"converged, {CONVERGED_SAMPLER} {CONVERGED_STEPS} steps",
          "best_stock": f"best stock scheduler, {PLAIN_STEPS} steps",
          "glance": f"Glance, {sum(GLANCE_STEPS)} steps", "fitted": f"fitted schedule, {sum(GLANCE_STEPS)} steps",
          "distilled": f"distilled experts, {sum(GLANCE_STEPS)} steps"}


def emoji_png(path: Path, caption: str) -> Path:
    """The emoji with this caption (from the kit's committed atlas) as an RGB PNG."""
    from PIL import Image

    data = emoji_data.load()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.images[data.captions.index(caption)]).save(path)
    return path


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def choose_prompts(train_caption: str, held_out: int) -> list[tuple[str, str]]:
    """[(caption, role)]: the training caption, two more training captions, ``held_out`` held-out ones."""
    data = emoji_data.load()
    prompts = [(train_caption, "LoRAs' training image")]
    prompts += [(c, "base model trained on it") for c in OTHER_TRAINING if c != train_caption]
    held = data.indices(held_out=True)
    prompts += [(data.captions[held[round(i * len(held) / held_out)]], "held out") for i in range(held_out)]
    return prompts


class _Stop(Exception):
    pass


def _on_signal(signum, _frame):
    raise _Stop(f"stopped by signal {signal.Signals(signum).name}")


def run_demo(args) -> int:
    host = find_comfyui()
    if host is None:
        print("ComfyUI not found: set COMFYUI_PATH to your ComfyUI folder (or put it at ~/comfy/ComfyUI).", file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    print(f"ComfyUI: {host}\nwork folder: {workdir}")
    t0 = time.monotonic()
    model_kit.ensure_demo_models(workdir / "models")
    if args.image:
        image_path, caption = args.image, args.caption
    else:
        caption = args.caption or TRAIN_CAPTION
        data = emoji_data.load()
        if caption not in data.captions:
            print(f"--caption {caption!r} is not an emoji caption of the kit (see cli/kit/emoji64.json, e.g. "
                  f"\"{TRAIN_CAPTION}\"); or give your own image with --image PNG --caption TEXT", file=sys.stderr)
            return 2
        if data.held_out[data.captions.index(caption)]:
            print(f"--caption {caption!r} is held out (never trained on, so it stays a fair test): pick a training "
                  f"caption, e.g. \"{TRAIN_CAPTION}\"", file=sys.stderr)
            return 2
        image_path = emoji_png(workdir / "demo_emoji.png", caption)
    print(f"model kit ready ({time.monotonic() - t0:.1f} s); training image {image_path}, caption \"{caption}\"")

    server = ComfyServer(workdir)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started from a background job
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        t0 = time.monotonic()
        server.start()
        print(f"server up at {server.url} in {time.monotonic() - t0:.1f} s (log: {server.log_path})")
        return _jobs(ComfyClient(server.url), image_path, caption, args)
    except (KeyboardInterrupt, _Stop) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}); stopping the server", file=sys.stderr)
        return 130
    except (PromptError, ServerError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


def _seconds(entry: dict) -> float:
    return entry["execution_seconds"] if entry.get("execution_seconds") is not None else entry["seconds"]


def _jobs(client: ComfyClient, image_path: Path, caption: str, args) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out.resolve()
    progress = None if args.quiet else ProgressPrinter
    image_name = client.upload_image(image_path)
    slow_name, fast_name = f"glance_demo/slow_{stamp}", f"glance_demo/fast_{stamp}"
    train = load_api("glance_train_and_sample")
    schedule = _kit_schedule()
    train = apply_overrides(train, {
        **model_kit.kit_overrides(train), "Training image.image": image_name, "Caption.text": caption,
        "Prompt.text": caption, "Train Slow-LoRA.save_name": slow_name, "Train Fast-LoRA.save_name": fast_name,
        "Glance Sigmas.preset": "split_from_model_scheduler", "Glance Sigmas.switch_sigma": schedule["switch"],
        "Glance Phase KSampler.seed": args.seed + 1000, "Save Image.filename_prefix": "glance_demo/warmup"})
    steps_total = 2 + len(VARIANTS)
    print(f"1/{steps_total} training the Slow- and Fast-LoRA from one image, then sampling with them")
    trained = client.run(train, on_event=progress and progress(train))

    fit = load_api("glance_fit_and_distill")
    fit = apply_overrides(fit, {
        **model_kit.kit_overrides(fit), "Training prompt.text": caption, "Prompt.text": caption,
        "Glance Distill Experts.save_name_slow": f"glance_demo/distilled_slow_{stamp}",
        "Glance Distill Experts.save_name_fast": f"glance_demo/distilled_fast_{stamp}",
        "Glance Phase KSampler.seed": args.seed + 1000, "Save Image.filename_prefix": "glance_demo/warmup"})

    stock = load_api("stock_two_sampler_baseline")
    stock = apply_overrides(stock, {**model_kit.kit_overrides(stock), "Slow-LoRA.strength_model": 0.0,
                                    "Fast-LoRA.strength_model": 0.0, "Slow-LoRA.lora_name": slow_name + ".safetensors",
                                    "Fast-LoRA.lora_name": fast_name + ".safetensors"})
    graphs = {
        "glance": (train, "Glance Phase KSampler.seed"),
        "fitted": (_rewired(fit, "Glance Phase KSampler", ("model_slow", "model_fast"), "UNETLoader"),
                   "Glance Phase KSampler.seed"),
        "distilled": (fit, "Glance Phase KSampler.seed"),
        "plain": (_steps(stock, PLAIN_STEPS), ("Slow phase.noise_seed", "Fast phase.noise_seed")),
        "reference": (_steps(stock, REFERENCE_STEPS), ("Slow phase.noise_seed", "Fast phase.noise_seed")),
        "converged": (apply_overrides(_steps(stock, CONVERGED_STEPS), {"Slow phase.sampler_name": CONVERGED_SAMPLER,
                                                                       "Fast phase.sampler_name": CONVERGED_SAMPLER}),
                      ("Slow phase.noise_seed", "Fast phase.noise_seed")),
    }
    prompts = choose_prompts(caption, args.held_out)
    files = {v: [] for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    distilled, n = None, 1
    for variant in VARIANTS:
        if variant == "fitted":  # after the Glance runs: the host caches only the last graph's outputs (the LoRAs)
            n += 1
            print(f"{n}/{steps_total} fitting a schedule and distilling experts from the caption \"{caption}\" (no image)")
            distilled = client.run(fit, on_event=progress and progress(fit))
        n += 1
        if variant == "best_stock":  # after the converged picture, which it is judged against
            name, scores = stock_pick = _best_stock_scheduler(client, graphs["plain"][0], prompts, files["converged"],
                                                              args, out)
            graphs["best_stock"] = (_scheduled(graphs["plain"][0], name), graphs["plain"][1])
            print(f"{n}/{steps_total} best stock scheduler with Euler at {PLAIN_STEPS} steps on the held-out prompts: "
                  f"{name} (" + ", ".join(f"{k} {v:.1f}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1])) + " dB)")
        graph, seed_inputs = graphs[variant]
        timed = variant != "converged"
        print(f"{n}/{steps_total} {LABELS[variant]}: {len(prompts)} prompts, " + (
            "each once untimed (text encoding) and once timed" if timed else "each once, untimed"))
        files[variant], times[variant] = _sample_variant(client, graph, seed_inputs, prompts, variant, args, out, timed)
    real = [emoji_png(out / f"real_{i}.png", text) if text in emoji_data.load().captions else None
            for i, (text, _role) in enumerate(prompts)]
    if args.image:
        real[0] = image_path
    psnr = {v: [_psnr(f, r) for f, r in zip(files[v], files["converged"])] for v in VARIANTS}
    picture = _grid(prompts, real, files, out / "glance_demo.png")
    cfg = next(n["inputs"]["cfg_slow"] for n in train.values() if n["class_type"] == "GlancePhaseKSampler")
    _report(trained, distilled, times, psnr, prompts, caption, schedule, cfg, picture, slow_name, fast_name, stock_pick)
    return 0


def _sample_variant(client: ComfyClient, graph: dict, seed_inputs, prompts, variant: str, args, out: Path,
                    timed: bool = True):
    """Each prompt once untimed (text encoding) and once timed, with the same seed for every variant: the timed
    runs' pictures and times (``timed`` False: each prompt once, the demo's seed)."""
    keys = (seed_inputs,) if isinstance(seed_inputs, str) else seed_inputs
    files, times = [], []
    for text, _role in prompts:
        runs = []
        for seed in (args.seed + 1000, args.seed) if timed else (args.seed,):  # the first encodes the prompt: untimed
            p = apply_overrides(graph, {"Prompt.text": text, "Save Image.filename_prefix": f"glance_demo/{variant}",
                                        **{k: seed for k in keys}})
            runs.append(client.run(p))
        times.append(_seconds(runs[-1]))
        files.append(client.save_outputs(runs[-1], out)[0])
    return files, times


def _scheduled(stock: dict, scheduler: str) -> dict:
    return apply_overrides(stock, {"Slow phase.scheduler": scheduler, "Fast phase.scheduler": scheduler})


def _host_schedulers(info: dict) -> list[str]:
    """The host's stock schedulers, as its KSamplerAdvanced offers them (either form of a combo)."""
    spec = info["KSamplerAdvanced"]["input"]["required"]["scheduler"]
    return list(spec[1]["options"] if spec[0] == "COMBO" else spec[0])


def _best_stock_scheduler(client: ComfyClient, plain: dict, prompts, reference: list[Path], args, out: Path):
    """The host's stock scheduler whose plain run (Euler, the plain steps) lands closest to the reference on the
    held-out prompts (mean pixel PSNR, the demo's seed): (its name, every scheduler's mean)."""
    held = [i for i, (_, role) in enumerate(prompts) if role == "held out"] or list(range(len(prompts)))
    scores = {}
    for name in _host_schedulers(client.object_info()):
        graph = _scheduled(plain, name)
        dbs = []
        for i in held:
            p = apply_overrides(graph, {"Prompt.text": prompts[i][0], "Save Image.filename_prefix": "glance_demo/stock_pick",
                                        "Slow phase.noise_seed": args.seed, "Fast phase.noise_seed": args.seed})
            dbs.append(_psnr(client.save_outputs(client.run(p), out / "stock_pick")[0], reference[i]))
        scores[name] = statistics.mean(dbs)
    return max(scores, key=scores.get), scores


def _rewired(graph: dict, title: str, inputs: tuple[str, ...], source_class: str, output: int = 0) -> dict:
    """A copy of ``graph`` with the node titled ``title`` taking ``inputs`` from output ``output`` of the graph's
    one ``source_class`` node (e.g. the base model's loader instead of the distilled experts)."""
    from cli.client import find_node

    graph = json.loads(json.dumps(graph))
    sources = [k for k, n in graph.items() if n["class_type"] == source_class]
    if len(sources) != 1:
        raise ValueError(f"{source_class}: the graph has {len(sources)} such nodes, expected one")
    node, source = graph[find_node(graph, title)], sources[0]
    for name in inputs:
        node["inputs"][name] = [source, output]
    return graph


def _kit_schedule() -> dict:
    """The switch sigma between the Slow- and Fast-LoRA's training timesteps (steps 9 and 11 of the kit model's
    50-step schedule), so the sampler's split follows the model's own scheduler as the LoRAs were trained."""

    def sigma(step: int) -> float:  # the stock SD3 time shift at step ``step`` (1-based) of 50
        t = 1 - (step - 1) / 50
        return model_kit.SHIFT * t / (1 + (model_kit.SHIFT - 1) * t)

    return {"switch": round((sigma(9) + sigma(11)) / 2, 4)}


def _steps(stock: dict, steps: int) -> dict:
    """The stock two-sampler graph as one plain run of ``steps`` steps (split in the middle, leftover noise kept)."""
    half = steps // 2
    return apply_overrides(stock, {"Slow phase.steps": steps, "Slow phase.end_at_step": half,
                                   "Fast phase.steps": steps, "Fast phase.start_at_step": half})


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _psnr(a: Path, b: Path) -> float:
    mse = float(((_pixels(a) - _pixels(b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _grid(prompts, real, files: dict, path: Path) -> Path:
    """One row per prompt: real emoji | converged | 50 steps | 10 steps | best stock | Glance | fitted schedule |
    distilled experts (10 steps each), each 2x, labelled (two header lines)."""
    from PIL import Image, ImageDraw

    cols = ["real", "converged", "reference", "plain", "best_stock", "glance", "fitted", "distilled"]
    cell, head, label_w = 128, 32, 300
    sheet = Image.new("RGB", (label_w + cell * len(cols), head + cell * len(prompts)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, key in enumerate(cols):
        for line, text in enumerate(LABELS[key].split(", ")):
            draw.text((label_w + c * cell + 4, 3 + 14 * line), text, fill="black")
    for r, (text, role) in enumerate(prompts):
        y = head + r * cell
        draw.text((4, y + cell // 2 - 14), text[:46], fill="black")
        draw.text((4, y + cell // 2 + 2), f"({role})", fill="gray")
        for c, key in enumerate(cols):
            file = real[r] if key == "real" else files[key][r]
            if file is not None:
                sheet.paste(Image.open(file).convert("RGB").resize((cell, cell), Image.NEAREST), (label_w + c * cell, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _report(trained, distilled, times, psnr, prompts, caption, schedule, cfg, picture, slow_name, fast_name,
            stock_pick) -> None:
    held = [i for i, (_, role) in enumerate(prompts) if role == "held out"]
    seen = [i for i in range(len(prompts)) if i not in held]

    def mean_db(values, idx):
        vals = [values[i] for i in idx]
        return "-" if not vals else ("inf" if any(math.isinf(v) for v in vals) else f"{statistics.mean(vals):.1f} dB")

    print(f"\nGlance demo report (CPU, demo model kit: SD3-family MMDiT, {model_kit.IMAGE_SIZE}x{model_kit.IMAGE_SIZE} px, "
          f"cfg {cfg:g}, Euler, same seed for every variant)")
    print(f"  LoRAs trained on       \"{caption}\" (one image): {_seconds(trained):.1f} s incl. the first sampling; "
          f"loras/{slow_name}.safetensors, loras/{fast_name}.safetensors")
    print(f"  Glance schedule        5 slow + 5 fast steps along the model's scheduler, switch at sigma {schedule['switch']:g}")
    print(f"  fitted and distilled   from the caption alone: {_seconds(distilled):.1f} s for the fit, the two experts "
          f"and the first sampling (glance_fit_and_distill)")
    print(f"  best stock scheduler   {stock_pick[0]}: of the host's schedulers, the closest to the converged picture with Euler at "
          f"{PLAIN_STEPS} steps on the held-out captions (" + ", ".join(
              f"{k} {v:.1f}" for k, v in sorted(stock_pick[1].items(), key=lambda kv: -kv[1])) + " dB)")
    print(f"  reference              the converged picture: base model, {CONVERGED_SAMPLER}, {CONVERGED_STEPS} steps")
    print(f"  {'variant':<36} {'time per image':>15} {'PSNR to converged, held out':>28} {'training captions':>18}")
    for v in SHOWN:
        t = statistics.median(times[v])
        db = (mean_db(psnr[v], held), mean_db(psnr[v], seen))
        print(f"  {LABELS[v]:<36} {t:>13.2f} s {db[0]:>28} {db[1]:>18}")
    ref = statistics.median(times["reference"])
    speedups = ", ".join(f"{LABELS[v].split(',')[0]} {ref / statistics.median(times[v]):.1f}x"
                         for v in SHOWN if v != "reference")
    print(f"  speed-up vs 50 steps   {speedups} (10 steps each;")
    print(f"                         median graph execution time on the server, {len(prompts)} prompts)")
    print(f"  picture                {picture}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train Glance LoRAs from one image on a real headless ComfyUI, sample, compare.")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help=f"ComfyUI base folder for the demo (models/, input/, output/); default {DEFAULT_WORKDIR}")
    ap.add_argument("--out", type=Path, default=None, help="where the pictures go (default: WORKDIR/demo_output)")
    ap.add_argument("--caption", help=f"the training emoji's caption (default \"{TRAIN_CAPTION}\"); with --image, "
                                      "your image's caption")
    ap.add_argument("--image", type=Path, help="your own training image instead (use with --caption)")
    ap.add_argument("--held-out", type=int, default=3, help="held-out captions to sample (never trained on)")
    ap.add_argument("--seed", type=int, default=42, help="sampling seed")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.image and not args.caption:
        ap.error("--image needs --caption")
    args.out = args.out or args.workdir / "demo_output"
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
