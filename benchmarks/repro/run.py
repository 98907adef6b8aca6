"""Does Glance work? The paper's claim, reproduced small on real data with this pack's own nodes (CPU).

    python -m benchmarks.repro.run              (from the repository root; see README for its time here)

Base model: the demo kit (cli/model_kit.py: an SD3-family MMDiT trained on the training captions of Google's
emoji, through the stock CLIPLoader, UNETLoader and VAELoader, stock SD3 shift 3.0). GlanceTrainLoRA trains a
Slow-LoRA and a Fast-LoRA from ONE training emoji and its caption at the paper's timesteps of this model's own
50-step schedule (steps 1,3,5,7,9 | 11,21,31,41,50), and a single LoRA on all ten. Every variant then samples
held-out captions (never seen by the base model or any LoRA) from the same seeds; metrics compare each with the
base model's 50-step samples. Then our rows (``fitted.py``: schedules fitted to the model and experts
distilled from it, from the training caption alone; ``--no-fitted`` skips them) on the same captions and seeds.
Writes ``out/results.md``, ``out/results.json`` and ``out/grid.png``.

Rows are ``Variant`` entries; each names a sampling ``kind`` (a function in ``SAMPLERS``) and the models it
uses (trained by ``train_experts``): a new row is one entry, a new kind one function.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cli import emoji_data
from cli.host import pack_module, start_in_process

from . import fitted
from .metrics import EmojiJudge, mse, psnr

HERE = Path(__file__).resolve().parent
TRAIN_CAPTION = "red apple, food and drink"
SLOW_STEPS, FAST_STEPS = (1, 3, 5, 7, 9), (11, 21, 31, 41, 50)
SLOW_STEPS_8 = (1, 5, 9)  # Glance 8 steps: three of the five slow timesteps, all five fast ones
REFERENCE = "base, 50 steps (reference)"
BASE_10 = "base, 10 steps"


@dataclass
class Variant:
    name: str
    kind: str  # a key of SAMPLERS
    steps: int
    slow: str = "base"  # the model (a key of the models dict) for the whole run, or for the slow phase
    fast: str = "base"  # the fast phase's model (phase kinds)
    sigmas: torch.Tensor | None = None  # explicit schedule (phase kinds)
    switch: float = 0.0


@dataclass
class Prompt:
    caption: str
    category: int
    positive: list
    index: int  # in the emoji set


@dataclass
class Bench:
    """Everything a comparison needs, loaded once through the host's stock nodes."""
    N: dict
    model: object
    clip: object
    vae: object
    negative: list
    train: Prompt
    image: torch.Tensor  # the one training image, [1, H, W, 3]
    prompts: list[Prompt]  # held-out captions
    judge: EmojiJudge
    timesteps: dict  # slow, fast, slow8: t values of the model's own 50-step schedule
    switch: float
    image_size: int
    shift: float
    training_captions: int
    cfg: float
    data: emoji_data.Emoji = field(repr=False, default=None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Glance at small scale: 10-step quality vs the 50-step reference.")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--prompts", type=int, default=100, help="held-out captions to sample (spread over the set)")
    ap.add_argument("--seeds", type=int, default=4, help="samples per held-out caption")
    ap.add_argument("--cfg", type=float, default=5.0, help="CFG scale of every variant, both phases")
    ap.add_argument("--caption", default=TRAIN_CAPTION, help="the training emoji the LoRAs learn from")
    ap.add_argument("--rank", type=int, default=-1, help="LoRA rank (-1: the trainer's SD3 default, 16)")
    ap.add_argument("--alpha", type=float, default=-1, help="LoRA alpha (-1: default, 64)")
    ap.add_argument("--lr", type=float, default=-1, help="learning rate (-1: default, 5e-4)")
    ap.add_argument("--steps", type=int, default=-1, help="optimiser steps per LoRA (-1: the paper's 60)")
    ap.add_argument("--no-fitted", action="store_true", help="skip the fitted-schedule and distilled-expert rows")
    ap.add_argument("--distill-steps", type=int, default=200, help="Glance Distill Experts: optimiser steps per expert")
    ap.add_argument("--distill-rollouts", type=int, default=16, help="Glance Distill Experts: teacher rollouts")
    ap.add_argument("--distill-lr", type=float, default=3e-5, help="Glance Distill Experts: learning rate")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():  # as the host's executor runs nodes (the trainer leaves it by itself)
        run(args, argv)


def held_out_indices(data: emoji_data.Emoji, n: int) -> list[int]:
    """``n`` held-out emoji spread evenly over the held-out set (which is in the package's category order)."""
    held = data.indices(held_out=True)
    if n > len(held):
        raise ValueError(f"--prompts {n}: there are {len(held)} held-out captions")
    return [held[round(i * len(held) / n)] for i in range(n)]


def trained_caption_count(path: Path) -> int:
    """The number of distinct captions the base model was trained on, from its file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int((f.metadata() or {})["glance_kit.training_captions"])


def load_bench(args) -> Bench:
    base_dir = args.out / "comfy_base"
    nodes = start_in_process(base_dir)
    import comfy.utils
    from cli import model_kit

    comfy.utils.set_progress_bar_enabled(False)
    paths = model_kit.ensure_demo_models(base_dir / "models")
    shutil.rmtree(base_dir / "models" / "loras" / "glance_repro", ignore_errors=True)
    recipes = pack_module("training.recipes")
    N = nodes.NODE_CLASS_MAPPINGS
    loaders = model_kit.node_inputs()
    model = N["UNETLoader"]().load_unet(**loaders["UNETLoader"])[0]
    clip = N["CLIPLoader"]().load_clip(**loaders["CLIPLoader"])[0]
    vae = N["VAELoader"]().load_vae(**loaders["VAELoader"])[0]
    encode = N["CLIPTextEncode"]()

    data = emoji_data.load()
    if args.caption not in data.captions:
        raise ValueError(f"--caption {args.caption!r} is not an emoji caption (see cli/kit/emoji64.json)")
    train_index = data.captions.index(args.caption)
    if data.held_out[train_index]:
        raise ValueError(f"--caption {args.caption!r} is held out: the LoRAs must learn from a training caption")
    categories = data.category_ids()

    def prompt(i: int) -> Prompt:
        return Prompt(data.captions[i], categories[i], encode.encode(clip, data.captions[i])[0], i)

    train = data.indices(held_out=False)
    ms = model.get_model_object("model_sampling")
    ts = {k: recipes.schedule_timesteps(ms, steps) for k, steps in
          (("slow", SLOW_STEPS), ("fast", FAST_STEPS), ("slow8", SLOW_STEPS_8))}
    return Bench(
        N=N, model=model, clip=clip, vae=vae, negative=encode.encode(clip, "")[0], train=prompt(train_index),
        image=data.tensor([train_index]).movedim(1, -1), prompts=[prompt(i) for i in held_out_indices(data, args.prompts)],
        judge=EmojiJudge(data.tensor(train), [categories[i] for i in train]), timesteps=ts,
        switch=round((ts["slow"][-1] + ts["fast"][0]) / 2000, 6), image_size=model_kit.IMAGE_SIZE, shift=model_kit.SHIFT,
        training_captions=trained_caption_count(paths["diffusion_model"]), cfg=args.cfg, data=data,
    )


def train_lora(b: Bench, phase: str, timesteps, name: str, rank=-1, alpha=-1, lr=-1, steps=-1):
    """GlanceTrainLoRA on the one training image; returns (patched model, seconds)."""
    t0 = time.time()
    ts = "" if timesteps is None else ", ".join(f"{t:g}" for t in timesteps)
    out = b.N["GlanceTrainLoRA"].execute(
        model=b.model, vae=b.vae, image=b.image, positive=b.train.positive, phase=phase, timesteps=ts,
        rank=rank, alpha=alpha, learning_rate=lr, steps=steps, seed=0, caption_dropout=0.1,
        gradient_checkpointing=False, save_name=f"glance_repro/{name}", resolution=b.image_size,
    ).args
    return out[0], time.time() - t0


def train_experts(b: Bench, lora: dict) -> tuple[dict, dict]:
    """The models the variants use, by name, and each trained one's training seconds."""
    ts = b.timesteps
    models, seconds = {"base": b.model}, {}
    models["slow"], seconds["slow"] = train_lora(b, "slow", None, "slow", **lora)
    models["fast"], seconds["fast"] = train_lora(b, "fast", None, "fast", **lora)
    models["single"], seconds["single"] = train_lora(b, "custom", ts["slow"] + ts["fast"], "single", **lora)
    return models, seconds


def sig(ts) -> torch.Tensor:
    return torch.tensor([t / 1000 for t in ts] + [0.0], dtype=torch.float32)


def variants(b: Bench) -> list[Variant]:
    ts = b.timesteps
    ten, eight = sig(ts["slow"] + ts["fast"]), sig(ts["slow8"] + ts["fast"])
    return [
        Variant(REFERENCE, "plain", 50),
        Variant(BASE_10, "plain", 10),
        Variant("base, 10 steps at the Glance timesteps", "phase", 10, "base", "base", ten, b.switch),
        Variant("Glance, 10 steps (5 slow + 5 fast LoRA)", "phase", 10, "slow", "fast", ten, b.switch),
        Variant("single LoRA on all 10 timesteps, 10 steps", "phase", 10, "single", "single", ten, b.switch),
        Variant("Slow-LoRA only (fast phase on the base), 10 steps", "phase", 10, "slow", "base", ten, b.switch),
        Variant("Fast-LoRA only (slow phase on the base), 10 steps", "phase", 10, "base", "fast", ten, b.switch),
        Variant("base, 8 steps", "plain", 8),
        Variant("base, 6 steps", "plain", 6),
        Variant("Glance, 8 steps (3 slow + 5 fast LoRA)", "phase", 8, "slow", "fast", eight, b.switch),
        Variant("single LoRA, 8 steps", "phase", 8, "single", "single", eight, b.switch),
    ]


def _latent(b: Bench, seeds: int) -> dict:
    size = b.image_size // 8
    return {"samples": torch.zeros((seeds, 16, size, size))}


def sample_plain(b: Bench, models: dict, v: Variant, p: Prompt, seeds: int, seed: int) -> torch.Tensor:
    """The stock KSampler: ``v.steps`` steps of the 'simple' schedule, Euler."""
    out = b.N["KSampler"]().sample(models[v.slow], seed, v.steps, b.cfg, "euler", "simple", p.positive, b.negative,
                                   _latent(b, seeds))[0]
    return out["samples"].float()


def sample_phase(b: Bench, models: dict, v: Variant, p: Prompt, seeds: int, seed: int) -> torch.Tensor:
    """GlancePhaseKSampler: ``v.slow`` above ``v.switch``, ``v.fast`` below, on the explicit ``v.sigmas``."""
    out = b.N["GlancePhaseKSampler"].execute(
        model_slow=models[v.slow], model_fast=models[v.fast], positive=p.positive, negative=b.negative,
        latent_image=_latent(b, seeds), seed=seed, steps=v.steps, switch_sigma=v.switch, cfg_slow=b.cfg,
        cfg_fast=b.cfg, sampler_name="euler", scheduler="simple", sigmas=v.sigmas,
    ).args[0]
    return out["samples"].float()


SAMPLERS = {"plain": sample_plain, "phase": sample_phase}


def run_variants(b: Bench, models: dict, variant_list, seeds: int) -> dict:
    results = {}
    for v in variant_list:
        t0 = time.time()
        lat = torch.cat([SAMPLERS[v.kind](b, models, v, p, seeds, 1000 + k) for k, p in enumerate(b.prompts)])
        elapsed = time.time() - t0
        pix = b.N["VAEDecode"]().decode(b.vae, {"samples": lat})[0].float().clamp(0, 1)
        results[v.name] = dict(latent=lat, pixels=pix, steps=v.steps, seconds=elapsed)
        print(f"sampled {v.name}: {elapsed:.1f}s", flush=True)
    return results


def run(args, argv) -> None:
    t_start = time.time()
    b = load_bench(args)
    lora = dict(rank=args.rank, alpha=args.alpha, lr=args.lr, steps=args.steps)
    models, train_times = train_experts(b, lora)
    print(f"trained {len(train_times)} LoRAs: {train_times}", flush=True)
    variant_list = variants(b)
    results = run_variants(b, models, variant_list, args.seeds)
    fit_settings = {} if args.no_fitted else add_fitted_rows(b, models, results, args)
    want = torch.tensor([p.category for p in b.prompts]).repeat_interleave(args.seeds)
    table = score(results, b.judge, want)
    real = b.data.tensor([p.index for p in b.prompts]).movedim(1, -1)
    runtime = time.time() - t_start
    ts = b.timesteps
    settings = dict(
        training_captions=b.training_captions, held_out_prompts=len(b.prompts), seeds_per_prompt=args.seeds,
        held_out_captions=[p.caption for p in b.prompts], train_caption=b.train.caption, cfg=args.cfg,
        rank=args.rank, alpha=args.alpha, learning_rate=args.lr, lora_steps=args.steps,
        slow_t=list(ts["slow"]), fast_t=list(ts["fast"]), slow8_t=list(ts["slow8"]), switch_sigma=b.switch, shift=b.shift,
        real_held_out_category_accuracy=b.judge.accuracy(real, [p.category for p in b.prompts]),
        frechet_reference_to_real_held_out=b.judge.frechet(results[REFERENCE]["pixels"], real),
        train_seconds={k: round(v, 1) for k, v in train_times.items()}, runtime_seconds=round(runtime, 1),
        threads=args.threads, **fit_settings,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(table, settings, argv)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps(dict(settings=settings, table=table), indent=2))
    save_grid(results, list(results), b, args.seeds, args.out / "grid.png")
    print(md)


def eight_training_captions(b: Bench) -> list[int]:
    """The "8 captions" rows' prompts: the one training caption and seven more spread over the training set."""
    train = [i for i in b.data.indices(held_out=False) if i != b.train.index]
    return [b.train.index] + [train[round(k * len(train) / 7)] for k in range(7)]


def add_fitted_rows(b: Bench, models: dict, results: dict, args) -> dict:
    """Glance Fit Schedule and Glance Distill Experts from the training caption(s) only (fitted.py), then every
    held-out prompt from the same seeds as the other rows; adds the rows to ``results``, returns their settings."""
    encode = b.N["CLIPTextEncode"]()
    eight = eight_training_captions(b)
    size = b.image_size // 8
    kit = fitted.Kit(N=b.N, model=b.model, train_positive=b.train.positive, negative=b.negative,
                     latent={"samples": torch.zeros((1, 16, size, size))}, cfg=b.cfg,
                     train_positives=[encode.encode(b.clip, b.data.captions[i])[0] for i in eight])
    cost = fitted.time_fit(kit)
    print(f"fit cost: {cost}", flush=True)
    rows = fitted.fitted_rows(
        kit, [(p.positive, 1000 + k) for k, p in enumerate(b.prompts)], args.seeds, paper_switch=b.switch,
        paper_loras=(models["slow"], models["fast"]),
        distill_options=dict(steps=args.distill_steps, rollouts=args.distill_rollouts, learning_rate=args.distill_lr))
    for name, r in rows.items():
        r["pixels"] = b.N["VAEDecode"]().decode(b.vae, {"samples": r["latent"]})[0].float().clamp(0, 1)
        results[name] = r
    fine_steps, fine_scheduler = fitted.default_teacher()
    return dict(fit=cost, fit_rollouts=fitted.FIT_ROLLOUTS, fine_steps=fine_steps, fine_scheduler=fine_scheduler,
                eight_captions=[b.data.captions[i] for i in eight],
                distill=dict(steps=args.distill_steps, rollouts=args.distill_rollouts, learning_rate=args.distill_lr),
                fitted={name: dict(sigmas=r["sigmas"], switch_sigma=round(r["switch"], 4),
                                   fit_and_distill_seconds=round(r["cost_seconds"], 1)) for name, r in rows.items()})


def score(results: dict, judge: EmojiJudge, want: torch.Tensor) -> list[dict]:
    ref = results[REFERENCE]
    peak = float(ref["latent"].max() - ref["latent"].min())
    rows = []
    for name, r in results.items():
        rows.append(dict(
            variant=name, steps=r["steps"], seconds=round(r["seconds"], 1),
            latent_mse=mse(r["latent"], ref["latent"]), latent_psnr=psnr(r["latent"], ref["latent"], peak),
            pixel_mse=mse(r["pixels"], ref["pixels"]), pixel_psnr=psnr(r["pixels"], ref["pixels"], 1.0),
            category_accuracy=judge.accuracy(r["pixels"], want), frechet=judge.frechet(r["pixels"], ref["pixels"]),
        ))
    b10 = next(r for r in rows if r["variant"] == BASE_10)
    for row in rows:
        # Share of base 10-step's distance to the reference that this variant removes (1 = all of it).
        row["gap_closed_pixel_mse"] = 1 - row["pixel_mse"] / b10["pixel_mse"] if b10["pixel_mse"] > 0 else None
        row["gap_closed_frechet"] = 1 - row["frechet"] / b10["frechet"] if b10["frechet"] > 0 else None
    return rows


def render_markdown(rows: list[dict], s: dict, argv) -> str:
    cmd = "python -m benchmarks.repro.run" + ("".join(f" {a}" for a in argv) if argv else "")
    lines = [
        "| variant | steps | latent MSE | latent PSNR | pixel MSE | pixel PSNR | category accuracy | Frechet dist. | gap closed (pixel MSE / Frechet) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = "-" if r["variant"] == REFERENCE else f"{r['gap_closed_pixel_mse']:+.0%} / {r['gap_closed_frechet']:+.0%}"
        lines.append(
            f"| {r['variant']} | {r['steps']} | {r['latent_mse']:.4f} | {fmt_db(r['latent_psnr'])} | {r['pixel_mse']:.5f} | "
            f"{fmt_db(r['pixel_psnr'])} | {r['category_accuracy']:.0%} | {r['frechet']:.2f} | {gap} |"
        )
    return "\n".join([
        f"Command: `{cmd}` ({s['runtime_seconds'] / 60:.1f} min on this CPU, {s['threads']} thread(s)).",
        "",
        f"Base model trained on {s['training_captions']} emoji captions. {s['held_out_prompts']} held-out captions "
        f"x {s['seeds_per_prompt']} seeds; LoRAs trained on ONE training emoji, \"{s['train_caption']}\". "
        f"CFG {s['cfg']:g}, Euler. Slow t = {', '.join(f'{t:g}' for t in s['slow_t'])}; fast t = "
        f"{', '.join(f'{t:g}' for t in s['fast_t'])} (steps 1,3,5,7,9 | 11,21,31,41,50 of the model's 50-step "
        f"schedule, shift {s['shift']:g}); switch sigma {s['switch_sigma']:g}. LoRA rank/alpha/lr/steps: "
        f"{fmt_auto(s['rank'], 16)}/{fmt_auto(s['alpha'], 64)}/{fmt_auto(s['learning_rate'], 5e-4)}/{fmt_auto(s['lora_steps'], 60)}.",
        "",
        *lines,
        "",
        "MSE/PSNR: against the base model's 50-step sample from the same caption and seed (latent PSNR peak = the "
        "reference latents' range). Category accuracy: a classifier of the 9 emoji categories, trained here on the "
        f"training emoji, reads the caption's category (on the real held-out emoji: "
        f"{s['real_held_out_category_accuracy']:.0%}). Frechet distance: between the variant's and the reference's "
        f"sample sets in that classifier's hidden features (reference to the real held-out emoji: "
        f"{s['frechet_reference_to_real_held_out']:.2f}).",
        *fitted_notes(s),
    ]) + "\n"


def fitted_notes(s: dict) -> list[str]:
    if "fit" not in s:
        return []
    f, d = s["fit"], s["distill"]
    return [
        "",
        f"Fitted rows: Glance Fit Schedule on \"{s['train_caption']}\" only ({s['fit_rollouts']} rollouts of the model's "
        f"own {s['fine_steps']}-step {s.get('fine_scheduler', 'simple')} schedule, the (5 slow + 5 fast) row on twice as many steps; no image, no "
        f"training), the base model on both phases. Distilled rows: "
        f"Glance Distill Experts on that schedule, from the same caption ({d['steps']} steps per expert, "
        f"{d['rollouts']} rollouts, lr {d['learning_rate']:g}). \"(8 captions)\": fit and distillation from 8 training "
        f"captions. One fit took {f['fit_seconds']:.2f} s, one 50-step image {f['one_50_step_image_seconds']:.3f} s: "
        f"a fit costs {f['fit_in_50_step_images']:.1f} images at 50 steps (medians of 3, interleaved).",
    ]


def fmt_db(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.2f} dB"


def fmt_auto(v, default) -> str:
    return f"{default:g}" if v == -1 else f"{v:g}"


def save_grid(results: dict, names: list[str], b: Bench, seeds: int, path: Path, columns: int = 12) -> None:
    """Rows: the real emoji, then the variants; columns: the training image, then the first seed of ``columns``
    held-out captions spread over the set (so over the categories)."""
    from PIL import Image, ImageDraw

    cell, label_w = 64, 330
    shown = [round(i * len(b.prompts) / min(columns, len(b.prompts))) for i in range(min(columns, len(b.prompts)))]
    grid = Image.new("RGB", (label_w + (1 + len(shown)) * cell, (len(names) + 1) * cell), "white")
    draw = ImageDraw.Draw(grid)

    def paste(img: torch.Tensor, row: int, col: int):
        arr = (img.clamp(0, 1) * 255).round().byte().numpy()
        grid.paste(Image.fromarray(arr).resize((cell, cell), Image.NEAREST), (label_w + col * cell, row * cell))

    draw.text((4, 8), "training image | real held-out emoji", fill="black")
    draw.text((4, 24), f"(LoRAs: \"{b.train.caption}\"; held-out", fill="black")
    draw.text((4, 40), "emoji never trained on, captions = prompts)", fill="black")
    paste(b.image[0], 0, 0)
    real = b.data.tensor([b.prompts[k].index for k in shown]).movedim(1, -1)
    for col in range(len(shown)):
        paste(real[col], 0, col + 1)
    for row, name in enumerate(names, start=1):
        draw.text((4, row * cell + cell // 2 - 6), name, fill="black")
        pix = results[name]["pixels"]
        for col, k in enumerate(shown):
            paste(pix[k * seeds], row, col + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


if __name__ == "__main__":
    main()
