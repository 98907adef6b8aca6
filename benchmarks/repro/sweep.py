"""What was tried: Glance 10 steps against base 10 steps over CFG, LoRA settings and training timesteps.

    python -m benchmarks.repro.sweep          (from the repository root)

Same bench as ``run.py`` (same base model, training image, held-out prompts and seeds); writes ``out/sweep.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .run import BASE_10, HERE, REFERENCE, TRAIN_CAPTION, Variant, load_bench, run_variants, score, sig, train_lora

CFGS = (3.0, 5.0)
# (training/sampling timesteps, rank, learning rate, optimiser steps); alpha = 4 x rank as in the paper's recipes.
CONFIGS = (
    ("paper", 16, 5e-4, 60),
    ("paper", 16, 1e-4, 60),
    ("paper", 16, 2e-5, 60),
    ("paper", 4, 1e-4, 60),
    ("paper", 16, 5e-4, 20),
    ("paper", 16, 5e-4, 200),
    ("uniform", 16, 1e-4, 60),
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--prompts", type=int, default=40, help="held-out captions")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--caption", default=TRAIN_CAPTION)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.cfg = CFGS[0]
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        sweep(args)


def sweep(args) -> None:
    t_start = time.time()
    b = load_bench(args)
    import comfy.samplers  # the host is on the path from here on

    ts = b.timesteps
    uniform = comfy.samplers.calculate_sigmas(b.model.get_model_object("model_sampling"), "simple", 10).float().cpu()
    schedules = {
        "paper": (ts["slow"], ts["fast"], sig(ts["slow"] + ts["fast"]), b.switch),
        "uniform": (tuple(float(s) * 1000 for s in uniform[:5]), tuple(float(s) * 1000 for s in uniform[5:10]),
                    uniform, float(uniform[4] + uniform[5]) / 2),
    }
    want = torch.tensor([p.category for p in b.prompts]).repeat_interleave(args.seeds)
    trained = {}  # the LoRAs do not depend on CFG: train each pair once
    for n, (schedule, rank, lr, steps) in enumerate(CONFIGS):
        slow_t, fast_t, _, _ = schedules[schedule]
        lora = dict(rank=rank, alpha=4.0 * rank, lr=lr, steps=steps)
        trained[n] = {"base": b.model}
        trained[n]["slow"], _ = train_lora(b, "custom", slow_t, f"sweep_{n}_slow", **lora)
        trained[n]["fast"], _ = train_lora(b, "custom", fast_t, f"sweep_{n}_fast", **lora)
    rows = []
    for cfg in CFGS:
        b.cfg = cfg
        refs = [Variant(REFERENCE, "plain", 50), Variant(BASE_10, "plain", 10)]
        base = run_variants(b, {"base": b.model}, refs, args.seeds)
        for n, (schedule, rank, lr, steps) in enumerate(CONFIGS):
            _, _, sigmas, switch = schedules[schedule]
            name = f"Glance 10 ({schedule}, rank {rank}, lr {lr:g}, {steps} steps)"
            results = dict(base)
            results.update(run_variants(b, trained[n], [Variant(name, "phase", 10, "slow", "fast", sigmas, switch)], args.seeds))
            table = {r["variant"]: r for r in score(results, b.judge, want)}
            g, b10 = table[name], table[BASE_10]
            rows.append(dict(cfg=cfg, schedule=schedule, rank=rank, lr=lr, steps=steps, base10=b10, glance=g))
            print(f"cfg {cfg:g} {name}: pixel PSNR {g['pixel_psnr']:.2f} dB vs base 10 {b10['pixel_psnr']:.2f} dB", flush=True)

    lines = [
        f"Command: `python -m benchmarks.repro.sweep` ({(time.time() - t_start) / 60:.1f} min). {len(b.prompts)} held-out "
        f"captions, {args.seeds} seeds each; LoRAs from ONE emoji, \"{b.train.caption}\"; alpha = 4 x rank. "
        "'paper': the paper's steps 1,3,5,7,9 | 11,21,31,41,50 of this model's 50-step schedule; 'uniform': the 5 + 5 "
        "steps of its plain 10-step schedule.",
        "",
        "| CFG | timesteps | rank | lr | LoRA steps | base 10: pixel PSNR / category acc. | Glance 10: pixel PSNR / category acc. | gap closed (pixel MSE / Frechet) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g, b10 = r["glance"], r["base10"]
        lines.append(
            f"| {r['cfg']:g} | {r['schedule']} | {r['rank']} | {r['lr']:g} | {r['steps']} | "
            f"{b10['pixel_psnr']:.2f} dB / {b10['category_accuracy']:.0%} | {g['pixel_psnr']:.2f} dB / {g['category_accuracy']:.0%} | "
            f"{g['gap_closed_pixel_mse']:+.0%} / {g['gap_closed_frechet']:+.0%} |"
        )
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
