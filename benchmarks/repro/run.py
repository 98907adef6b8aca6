"""Does Glance work? The paper's claim, reproduced small on real data with this pack's own nodes (CPU).

    python -m benchmarks.repro.run              (from the repository root; 2-4 minutes on a shared 2-core CPU)

Base model: the demo kit (cli/model_kit.py: a 1.9M-parameter SD3-family MMDiT trained on scikit-learn's digits,
prompts "a handwritten digit N" through the stock CLIPLoader, stock UNETLoader/VAELoader, stock SD3 shift 3.0).
GlanceTrainLoRA trains a Slow-LoRA and a Fast-LoRA from ONE image (a test-split "3", never seen by the base
model) at the paper's timesteps of this model's own 50-step schedule (steps 1,3,5,7,9 | 11,21,31,41,50), and
a single LoRA on all ten. Every variant then samples the held-out prompts (the nine other digits) from the
same seeds; metrics compare each with the base model's 50-step samples. Writes ``out/results.md``,
``out/results.json`` and ``out/grid.png``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cli.host import pack_module, start_in_process

from . import data
from .metrics import DigitJudge, mse, psnr

HERE = Path(__file__).resolve().parent
TRAIN_DIGIT = 3
SLOW_STEPS, FAST_STEPS = (1, 3, 5, 7, 9), (11, 21, 31, 41, 50)
SLOW_STEPS_8 = (1, 5, 9)  # Glance 8 steps: three of the five slow timesteps, all five fast ones


@dataclass
class Variant:
    name: str
    slow: str  # which model runs the slow phase: base | slow | single
    fast: str
    sigmas: object  # a SIGMAS tensor, or an int: that many steps of the stock 'simple' schedule (KSampler)
    switch: float = 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Glance at small scale: 10-step quality vs the 50-step reference.")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--seeds", type=int, default=12, help="samples per held-out prompt")
    ap.add_argument("--cfg", type=float, default=1.0, help="CFG scale of every variant, both phases")
    ap.add_argument("--rank", type=int, default=-1, help="LoRA rank (-1: the trainer's SD3 default, 16)")
    ap.add_argument("--alpha", type=float, default=-1, help="LoRA alpha (-1: default, 64)")
    ap.add_argument("--lr", type=float, default=-1, help="learning rate (-1: default, 5e-4)")
    ap.add_argument("--steps", type=int, default=-1, help="optimiser steps per LoRA (-1: the paper's 60)")
    ap.add_argument("--train-index", type=int, default=0, help="which test-split image of the digit 3 to train on")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():  # as the host's executor runs nodes (the trainer leaves it by itself)
        run(args, argv)


@dataclass
class Bench:
    """Everything a comparison needs, loaded once through the host's stock nodes."""
    N: dict
    model: object
    vae: object
    conds: dict
    negative: list
    image: torch.Tensor
    train_image_index: int
    judge: DigitJudge
    timesteps: dict  # slow, fast, slow8: t values of the model's own 50-step schedule
    switch: float
    image_size: int
    shift: float


def load_bench(args) -> Bench:
    base_dir = args.out / "comfy_base"
    nodes = start_in_process(base_dir)
    import comfy.utils
    from cli import model_kit

    comfy.utils.set_progress_bar_enabled(False)
    model_kit.ensure_demo_models(base_dir / "models")
    shutil.rmtree(base_dir / "models" / "loras" / "glance_repro", ignore_errors=True)
    recipes = pack_module("training.recipes")
    N = nodes.NODE_CLASS_MAPPINGS

    model = N["UNETLoader"]().load_unet(model_kit.MMDIT_NAME, "default")[0]
    clip = N["CLIPLoader"]().load_clip(model_kit.CLIP_NAME, model_kit.CLIP_TYPE)[0]
    vae = N["VAELoader"]().load_vae(model_kit.VAE_NAME)[0]
    encode = N["CLIPTextEncode"]()
    conds = {d: encode.encode(clip, data.prompt(d))[0] for d in range(10)}
    negative = encode.encode(clip, "")[0]

    images, labels = data.load_digits()
    train_idx, test_idx = data.split(labels)
    pick = int(test_idx[labels[test_idx] == TRAIN_DIGIT][args.train_index])
    ms = model.get_model_object("model_sampling")
    ts = {k: recipes.schedule_timesteps(ms, steps) for k, steps in
          (("slow", SLOW_STEPS), ("fast", FAST_STEPS), ("slow8", SLOW_STEPS_8))}
    return Bench(
        N=N, model=model, vae=vae, conds=conds, negative=negative, image=images[pick:pick + 1].movedim(1, -1),
        train_image_index=pick, judge=DigitJudge(images[train_idx], labels[train_idx]), timesteps=ts,
        switch=round((ts["slow"][-1] + ts["fast"][0]) / 2000, 6), image_size=model_kit.IMAGE_SIZE, shift=model_kit.SHIFT,
    )


def train_lora(b: Bench, phase: str, timesteps, name: str, rank=-1, alpha=-1, lr=-1, steps=-1):
    """GlanceTrainLoRA on the one training image; returns (patched model, seconds)."""
    t0 = time.time()
    ts = "" if timesteps is None else ", ".join(f"{t:g}" for t in timesteps)
    out = b.N["GlanceTrainLoRA"].execute(
        model=b.model, vae=b.vae, image=b.image, positive=b.conds[TRAIN_DIGIT], phase=phase, timesteps=ts,
        rank=rank, alpha=alpha, learning_rate=lr, steps=steps, seed=0, caption_dropout=0.1,
        gradient_checkpointing=False, save_name=f"glance_repro/{name}", resolution=b.image_size,
    ).args
    return out[0], time.time() - t0


def sig(ts) -> torch.Tensor:
    return torch.tensor([t / 1000 for t in ts] + [0.0], dtype=torch.float32)


def run_variants(b: Bench, models: dict, variants, held_out, seeds: int, cfg: float) -> dict:
    results = {}
    for v in variants:
        t0 = time.time()
        lat = torch.cat([sample(b.N, models, v, b.conds[d], b.negative, seeds, cfg, 1000 + d, b.image_size // 8)
                         for d in held_out])
        elapsed = time.time() - t0
        pix = b.N["VAEDecode"]().decode(b.vae, {"samples": lat})[0].float().clamp(0, 1)
        steps = v.sigmas if isinstance(v.sigmas, int) else len(v.sigmas) - 1
        results[v.name] = dict(latent=lat, pixels=pix, steps=steps, seconds=elapsed)
        print(f"sampled {v.name}: {elapsed:.1f}s", flush=True)
    return results


def run(args, argv) -> None:
    t_start = time.time()
    b = load_bench(args)
    ts = b.timesteps
    models = {"base": b.model}
    train_times = {}
    lora = dict(rank=args.rank, alpha=args.alpha, lr=args.lr, steps=args.steps)
    models["slow"], train_times["slow"] = train_lora(b, "slow", None, "slow", **lora)
    models["fast"], train_times["fast"] = train_lora(b, "fast", None, "fast", **lora)
    models["single"], train_times["single"] = train_lora(b, "custom", ts["slow"] + ts["fast"], "single", **lora)
    print(f"trained 3 LoRAs: {train_times}", flush=True)
    ten, eight = sig(ts["slow"] + ts["fast"]), sig(ts["slow8"] + ts["fast"])
    variants = [
        Variant("base, 50 steps (reference)", "base", "base", 50),
        Variant("base, 10 steps", "base", "base", 10),
        Variant("base, 10 steps at the Glance timesteps", "base", "base", ten, b.switch),
        Variant("Glance, 10 steps (5 slow + 5 fast LoRA)", "slow", "fast", ten, b.switch),
        Variant("single LoRA on all 10 timesteps, 10 steps", "single", "single", ten, b.switch),
        Variant("Slow-LoRA only (fast phase on the base), 10 steps", "slow", "base", ten, b.switch),
        Variant("Fast-LoRA only (slow phase on the base), 10 steps", "base", "fast", ten, b.switch),
        Variant("base, 8 steps", "base", "base", 8),
        Variant("Glance, 8 steps (3 slow + 5 fast LoRA)", "slow", "fast", eight, b.switch),
        Variant("single LoRA, 8 steps", "single", "single", eight, b.switch),
    ]
    held_out = [d for d in range(10) if d != TRAIN_DIGIT]
    results = run_variants(b, models, variants, held_out, args.seeds, args.cfg)
    want = torch.tensor(held_out).repeat_interleave(args.seeds)
    table = score(results, variants[0].name, b.judge, want)
    runtime = time.time() - t_start
    settings = dict(
        seeds_per_prompt=args.seeds, held_out_digits=held_out, train_digit=TRAIN_DIGIT, train_image_index=b.train_image_index,
        cfg=args.cfg, rank=args.rank, alpha=args.alpha, learning_rate=args.lr, lora_steps=args.steps,
        slow_t=list(ts["slow"]), fast_t=list(ts["fast"]), slow8_t=list(ts["slow8"]), switch_sigma=b.switch, shift=b.shift,
        train_seconds=train_times, runtime_seconds=round(runtime, 1), threads=args.threads,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(table, settings, argv)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(dict(settings=settings, table=table), indent=2))
    save_grid(results, variants, b.image, held_out, args.seeds, args.out / "grid.png")
    print(md)


def sample(N, models, v: Variant, positive, negative, seeds: int, cfg: float, seed: int, size: int) -> torch.Tensor:
    latent = {"samples": torch.zeros((seeds, 16, size, size))}
    if isinstance(v.sigmas, int):
        out = N["KSampler"]().sample(models[v.slow], seed, v.sigmas, cfg, "euler", "simple", positive, negative, latent)[0]
    else:
        out = N["GlancePhaseKSampler"].execute(
            model_slow=models[v.slow], model_fast=models[v.fast], positive=positive, negative=negative,
            latent_image=latent, seed=seed, steps=len(v.sigmas) - 1, switch_sigma=v.switch, cfg_slow=cfg,
            cfg_fast=cfg, sampler_name="euler", scheduler="simple", sigmas=v.sigmas,
        ).args[0]
    return out["samples"].float()


def score(results: dict, ref_name: str, judge: DigitJudge, want: torch.Tensor) -> list[dict]:
    ref = results[ref_name]
    peak = float(ref["latent"].max() - ref["latent"].min())
    base10 = "base, 10 steps"
    rows = []
    for name, r in results.items():
        row = dict(
            variant=name, steps=r["steps"], seconds=round(r["seconds"], 1),
            latent_mse=mse(r["latent"], ref["latent"]), latent_psnr=psnr(r["latent"], ref["latent"], peak),
            pixel_mse=mse(r["pixels"], ref["pixels"]), pixel_psnr=psnr(r["pixels"], ref["pixels"], 1.0),
            accuracy=judge.accuracy(r["pixels"], want), frechet=judge.frechet(r["pixels"], ref["pixels"]),
        )
        rows.append(row)
    b10 = next(r for r in rows if r["variant"] == base10)
    for row in rows:
        # Share of base 10-step's distance to the reference that this variant removes (1 = all of it).
        row["gap_closed_pixel_mse"] = 1 - row["pixel_mse"] / b10["pixel_mse"] if b10["pixel_mse"] > 0 else None
        row["gap_closed_frechet"] = 1 - row["frechet"] / b10["frechet"] if b10["frechet"] > 0 else None
    return rows


def render_markdown(rows: list[dict], s: dict, argv) -> str:
    cmd = "python -m benchmarks.repro.run" + ("".join(f" {a}" for a in argv) if argv else "")
    lines = [
        "| variant | steps | latent MSE | latent PSNR | pixel MSE | pixel PSNR | digit accuracy | Frechet dist. | gap closed (pixel MSE / Frechet) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = r["variant"].endswith("(reference)")
        gap = "-" if ref else f"{r['gap_closed_pixel_mse']:+.0%} / {r['gap_closed_frechet']:+.0%}"
        lines.append(
            f"| {r['variant']} | {r['steps']} | {r['latent_mse']:.4f} | {fmt_db(r['latent_psnr'])} | {r['pixel_mse']:.5f} | "
            f"{fmt_db(r['pixel_psnr'])} | {r['accuracy']:.0%} | {r['frechet']:.2f} | {gap} |"
        )
    return "\n".join([
        f"Command: `{cmd}` ({s['runtime_seconds'] / 60:.1f} min on this CPU, {s['threads']} thread(s)).",
        "",
        f"Held-out prompts: digits {', '.join(map(str, s['held_out_digits']))} ({s['seeds_per_prompt']} seeds each); "
        f"LoRAs trained on ONE image of a {s['train_digit']} (test split #{s['train_image_index']}). CFG {s['cfg']:g}, Euler. "
        f"Slow t = {', '.join(f'{t:g}' for t in s['slow_t'])}; fast t = {', '.join(f'{t:g}' for t in s['fast_t'])} "
        f"(steps 1,3,5,7,9 | 11,21,31,41,50 of the model's 50-step schedule, shift {s['shift']:g}); switch sigma {s['switch_sigma']:g}. "
        f"LoRA rank/alpha/lr/steps: {fmt_auto(s['rank'], 16)}/{fmt_auto(s['alpha'], 64)}/{fmt_auto(s['learning_rate'], 5e-4)}/{fmt_auto(s['lora_steps'], 60)}.",
        "",
        *lines,
        "",
        "MSE/PSNR: against the base model's 50-step sample from the same prompt and seed (latent PSNR peak = the "
        "reference latents' range). Digit accuracy: a classifier trained here on real digits reads the requested "
        "digit. Frechet distance: between the variant's and the reference's sample sets in that classifier's features.",
    ]) + "\n"


def fmt_db(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.2f} dB"


def fmt_auto(v, default) -> str:
    return f"{default:g}" if v == -1 else f"{v:g}"


def save_grid(results: dict, variants, train_image, held_out, seeds: int, path: Path) -> None:
    """Rows: variants; columns: the training image, then the first seed of each held-out prompt."""
    from PIL import Image, ImageDraw

    cell, label_w = 64, 330
    cols = 1 + len(held_out)
    grid = Image.new("RGB", (label_w + cols * cell, (len(variants) + 1) * cell), "white")
    draw = ImageDraw.Draw(grid)

    def paste(img: torch.Tensor, row: int, col: int):
        arr = (img.clamp(0, 1) * 255).round().byte().numpy()
        grid.paste(Image.fromarray(arr).resize((cell, cell), Image.NEAREST), (label_w + col * cell, row * cell))

    draw.text((4, cell // 2 - 6), "training image | held-out prompts: " + " ".join(map(str, held_out)), fill="black")
    paste(train_image[0], 0, 0)
    for row, v in enumerate(variants, start=1):
        draw.text((4, row * cell + cell // 2 - 6), v.name, fill="black")
        pix = results[v.name]["pixels"]
        for i in range(len(held_out)):
            paste(pix[i * seeds], row, i + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


if __name__ == "__main__":
    main()
