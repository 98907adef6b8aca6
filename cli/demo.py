"""The main job, one command: train Glance Slow/Fast LoRAs from one image on a real ComfyUI, sample, compare.

    python cli/demo.py [--workdir DIR] [--out DIR] [--digit N | --image PNG --caption TEXT]

Starts your ComfyUI (found like the tests find it: COMFYUI_PATH, ~/comfy/ComfyUI, or the ComfyUI this pack
is installed in) headless on loopback with this pack, in a work folder of its own. It writes the small demo
model kit there when missing (cli/model_kit.py: a tiny SD3-family MMDiT that draws digits, a CLIP-L and a
VAE) and a training image (a handwritten digit from scikit-learn), then queues the shipped workflows through
cli/client.py with their file names overridden by node title:

1. workflows/api/glance_train_and_sample.json: trains the Slow- and the Fast-LoRA from the one image and
   samples with them (Glance Phase KSampler, 5 slow + 5 fast steps);
2. the same graph again with another seed (the trained LoRAs are cached): the timed Glance sampling;
3. workflows/api/stock_two_sampler_baseline.json with LoRA strength 0 and 50 steps: the base model the
   usual way, the stock baseline Glance is compared against; and once as shipped (the same experts, 10 steps).

It saves the pictures and prints a short report. The server it started is stopped at the end, on Ctrl-C,
on SIGTERM and on errors.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import model_kit  # noqa: E402
from cli.client import ComfyClient, PromptError, ProgressPrinter, apply_overrides  # noqa: E402
from cli.server import ComfyServer, ServerError, find_comfyui  # noqa: E402

WORKFLOWS = ROOT / "workflows"
DEFAULT_WORKDIR = Path.home() / ".cache" / "comfyui-glance" / "demo"
BASELINE_STEPS = 50
GLANCE_STEPS = (5, 5)
TIMED_RUNS = 3
TRAIN_RESOLUTION = max(64, model_kit.IMAGE_SIZE)  # the kit's image size (GlanceTrainLoRA's minimum is 64)


def digit_png(path: Path, index: int = 3) -> tuple[Path, int]:
    """One of scikit-learn's handwritten digits (a real image from a registry package) as an RGB PNG of the
    kit's image size; returns (path, the digit)."""
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("The demo's training image is one of scikit-learn's digits: pip install scikit-learn "
                         "(or give your own: --image PNG --caption TEXT).") from None

    digits = load_digits()
    small = (digits.images[index] / 16.0 * 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((model_kit.IMAGE_SIZE,) * 2, Image.BILINEAR).convert("RGB").save(path)
    return path, int(digits.target[index])


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def kit_loaders() -> dict:
    """Title overrides that point the shipped Qwen-Image loaders at the kit."""
    inputs = model_kit.node_inputs()
    return {
        "Load Qwen-Image.unet_name": inputs["UNETLoader"]["unet_name"],
        "Load Text Encoder.clip_name": inputs["CLIPLoader"]["clip_name"],
        "Load Text Encoder.type": inputs["CLIPLoader"]["type"],
        "Load VAE.vae_name": inputs["VAELoader"]["vae_name"],
        "Image size.width": model_kit.IMAGE_SIZE,
        "Image size.height": model_kit.IMAGE_SIZE,
    }


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
        image_path, label = digit_png(workdir / "demo_digit.png", args.digit)
        caption = args.caption or model_kit.PROMPT.format(label)
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


def _jobs(client: ComfyClient, image_path: Path, caption: str, args) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    progress = None if args.quiet else ProgressPrinter
    image_name = client.upload_image(image_path)
    slow_name, fast_name = f"glance_demo/slow_{stamp}", f"glance_demo/fast_{stamp}"
    train = load_api("glance_train_and_sample")
    overrides = {**kit_loaders(), "Training image.image": image_name, "Caption.text": caption,
                 "Prompt.text": caption, "Train Slow-LoRA.save_name": slow_name, "Train Fast-LoRA.save_name": fast_name,
                 "Train Slow-LoRA.resolution": TRAIN_RESOLUTION, "Train Fast-LoRA.resolution": TRAIN_RESOLUTION,
                 "Glance Phase KSampler.seed": args.seed, "Save Image.filename_prefix": "glance_demo/warmup"}
    train = apply_overrides(train, overrides)
    print("1/4 training the Slow- and Fast-LoRA from one image, then sampling with them")
    trained = client.run(train, on_event=progress and progress(train))

    glance = apply_overrides(train, {"Save Image.filename_prefix": "glance_demo/glance"})
    print(f"2/4 Glance sampling with the trained LoRAs ({TIMED_RUNS} timed runs, training cached)")
    glance_runs = _timed(client, glance, "Glance Phase KSampler.seed", args.seed, progress)

    stock = load_api("stock_two_sampler_baseline")
    stock = apply_overrides(stock, {**kit_loaders(), "Prompt.text": caption,
                                    "Slow-LoRA.lora_name": slow_name + ".safetensors",
                                    "Fast-LoRA.lora_name": fast_name + ".safetensors",
                                    "Save Image.filename_prefix": "glance_demo/stock_experts"})
    print(f"3/4 the same experts with stock nodes (two KSamplerAdvanced, 10 steps; {TIMED_RUNS} timed runs)")
    experts_runs = _timed(client, stock, ("Slow phase.noise_seed", "Fast phase.noise_seed"), args.seed, progress)

    baseline = apply_overrides(stock, {
        "Slow-LoRA.strength_model": 0.0, "Fast-LoRA.strength_model": 0.0,
        "Slow phase.steps": BASELINE_STEPS, "Slow phase.end_at_step": BASELINE_STEPS,
        "Slow phase.return_with_leftover_noise": "disable",
        "Fast phase.steps": BASELINE_STEPS, "Fast phase.start_at_step": BASELINE_STEPS,
        "Save Image.filename_prefix": "glance_demo/baseline"})
    print(f"4/4 stock baseline: the base model, {BASELINE_STEPS} steps ({TIMED_RUNS} timed runs)")
    baseline_runs = _timed(client, baseline, ("Slow phase.noise_seed", "Fast phase.noise_seed"), args.seed, progress)

    out = args.out.resolve()
    files = {}
    for key, runs in (("glance", glance_runs), ("stock_experts", experts_runs), ("baseline", baseline_runs)):
        saved = client.save_outputs(runs[0], out)
        files[key] = saved[0] if saved else None
    picture = _side_by_side(image_path, files, out / "glance_demo.png")
    _report(trained, glance_runs, experts_runs, baseline_runs, train, caption, picture, slow_name, fast_name)
    return 0


def _seconds(entry: dict) -> float:
    return entry["execution_seconds"] if entry.get("execution_seconds") is not None else entry["seconds"]


def _timed(client: ComfyClient, prompt: dict, seed_inputs, seed: int, progress) -> list[dict]:
    """One untimed warm-up run, then TIMED_RUNS runs with the seed changed each time (so nothing is cached).

    The first timed run uses ``seed``, so its picture is comparable across graphs."""
    keys = (seed_inputs,) if isinstance(seed_inputs, str) else seed_inputs
    runs = []
    for i, s in enumerate([seed + 1000] + [seed + k for k in range(TIMED_RUNS)]):
        p = apply_overrides(prompt, {k: s for k in keys})
        runs.append(client.run(p, on_event=progress and i == 1 and progress(p) or None))
    return runs[1:]


def _median_seconds(runs: list[dict]) -> float:
    return statistics.median(_seconds(r) for r in runs)


def _side_by_side(train_image: Path, files: dict, path: Path) -> Path:
    """training image | Glance | stock, same experts | stock baseline, each scaled 4x, labelled."""
    from PIL import Image, ImageDraw

    panels = [("training image", train_image), (f"Glance {sum(GLANCE_STEPS)} steps", files["glance"]),
              ("stock, same LoRAs", files["stock_experts"]), (f"base {BASELINE_STEPS} steps", files["baseline"])]
    size, label_h = 128, 16
    sheet = Image.new("RGB", (size * len(panels), size + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, file) in enumerate(panels):
        if file is not None:
            sheet.paste(Image.open(file).convert("RGB").resize((size, size), Image.NEAREST), (i * size, label_h))
        draw.text((i * size + 4, 2), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _report(trained, glance_runs, experts_runs, baseline_runs, train, caption, picture, slow_name, fast_name) -> None:
    steps = {n["_meta"]["title"]: n["inputs"] for n in train.values()}
    cfg = steps["Glance Phase KSampler"]["cfg_slow"], steps["Glance Phase KSampler"]["cfg_fast"]
    passes_glance = sum(s * (2 if c != 1.0 else 1) for s, c in zip(GLANCE_STEPS, cfg))
    passes_base = BASELINE_STEPS * 2
    t_train = _seconds(trained)
    t_glance, t_experts, t_base = (_median_seconds(r) for r in (glance_runs, experts_runs, baseline_runs))
    print(f"\nGlance demo report (CPU, demo model kit: SD3-family MMDiT, {model_kit.IMAGE_SIZE}x{model_kit.IMAGE_SIZE} px)")
    print(f"  caption / prompt        \"{caption}\"")
    print(f"  training (both LoRAs)   {t_train:.1f} s incl. the first sampling; saved loras/{slow_name}.safetensors, "
          f"loras/{fast_name}.safetensors")
    print(f"  Glance                  {GLANCE_STEPS[0]} slow + {GLANCE_STEPS[1]} fast steps, cfg {cfg[0]:g}/{cfg[1]:g}, "
          f"{passes_glance} model passes: {t_glance:.2f} s (median of {TIMED_RUNS})")
    print(f"  stock, same LoRAs       two KSamplerAdvanced, 10 steps: {t_experts:.2f} s")
    print(f"  stock baseline          base model, {BASELINE_STEPS} steps, cfg {cfg[0]:g}, {passes_base} model passes: {t_base:.2f} s")
    print(f"  speed-up vs baseline    {t_base / t_glance:.1f}x wall clock (graph execution on the server), "
          f"{passes_base / passes_glance:.1f}x in model passes")
    print(f"  picture                 {picture}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train Glance LoRAs from one image on a real headless ComfyUI, sample, compare.")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help=f"ComfyUI base folder for the demo (models/, input/, output/); default {DEFAULT_WORKDIR}")
    ap.add_argument("--out", type=Path, default=None, help="where the pictures go (default: WORKDIR/demo_output)")
    ap.add_argument("--digit", type=int, default=3, help="which scikit-learn digit image to train on (index)")
    ap.add_argument("--image", type=Path, help="your own training image instead (use with --caption)")
    ap.add_argument("--caption", help="caption of the training image (also the prompt)")
    ap.add_argument("--seed", type=int, default=42, help="sampling seed")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.image and not args.caption:
        ap.error("--image needs --caption")
    args.out = args.out or args.workdir / "demo_output"
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
