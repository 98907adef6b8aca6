"""Reproduction rows for fitted schedules and distilled experts, produced through the pack's nodes.

For the reproduction's runner: given the loaded kit objects (the ``NODE_CLASS_MAPPINGS``, the model, the
training and the held-out conditionings, the negative, an empty latent for the size), ``fitted_rows`` fits the
schedules and distils the experts from the training caption(s) only, then samples every held-out prompt with
each row's models and schedule; it returns each row's latents (and what it cost) in the order of the prompts.
Rows (names as in the issue):

- ``fitted schedule, 10 steps`` / ``6 steps``: Glance Fit Schedule (5+5 / 3+3, switch placed by the fit), the
  base model on both phases;
- ``fitted schedule, 10 steps (5 slow + 5 fast)``: the fit with the switch held at the paper's switch (steps 1-9
  slow, 11-50 fast of the model's 50-step schedule): 5 steps above it, 5 below;
- ``distilled experts, 10 steps`` / ``6 steps``: Glance Distill Experts on the fitted 10 / 6-step schedule;
- ``paper's LoRAs on the fitted schedule``: the given Slow/Fast LoRA models (GlanceTrainLoRA's paper recipe)
  on the fitted 5 + 5 schedule with the paper's switch;
- ``... (8 captions)``: the fit and the distillation from 8 training captions (Conditioning (Combine)).

    python -m benchmarks.repro.fitted        (tries the rows on the kit today's run.py loads; prints a table)
"""
from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass, field

import torch

CFG = 3.0
FIT_ROLLOUTS = 8
FINE_STEPS = 50


@dataclass
class Kit:
    """What the rows need, loaded once (by the reproduction's runner)."""

    N: dict  # the host's NODE_CLASS_MAPPINGS
    model: object
    train_positive: list  # the training caption's conditioning
    negative: list
    latent: dict  # an empty LATENT of the image size (batch 1)
    cfg: float = CFG
    train_positives: list = field(default_factory=list)  # 8 captions' conditionings (for the "8 captions" rows)


@dataclass
class Row:
    name: str
    model_slow: object
    model_fast: object
    sigmas: torch.Tensor
    switch: float
    cost_seconds: float = 0.0  # fit + distillation time that the row needed (shared work counted in each row)
    cost_passes: int = 0


def combine(conds: list) -> list:
    """Conditioning (Combine) of several prompts: one list, one entry per prompt (what the nodes read as prompts)."""
    return [entry for c in conds for entry in c]


def fit(kit: Kit, steps_slow: int, steps_fast: int, positive=None, switch_sigma: float = 0.0, rollouts: int = FIT_ROLLOUTS,
        seed: int = 0, fine_steps: int = FINE_STEPS) -> tuple[torch.Tensor, float, float]:
    """Glance Fit Schedule; (sigmas, switch sigma, seconds)."""
    t0 = time.perf_counter()
    sigmas, switch, _ = kit.N["GlanceFitSchedule"].execute(
        model=kit.model, positive=positive if positive is not None else kit.train_positive, negative=kit.negative,
        cfg=kit.cfg, latent_image=kit.latent, steps_slow=steps_slow, steps_fast=steps_fast, fine_steps=fine_steps,
        scheduler="simple", rollouts=rollouts, seed=seed, switch_sigma=switch_sigma,
        save_name=f"glance_repro/fit_{steps_slow}+{steps_fast}_{uuid.uuid4().hex[:6]}").args
    return sigmas, switch, time.perf_counter() - t0


def distill(kit: Kit, sigmas, switch, positive=None, steps: int = 200, rollouts: int = 16, learning_rate: float = 3e-5,
            rank: int = -1, seed: int = 0, cfg_fast: float = -1.0) -> tuple[object, object, float]:
    """Glance Distill Experts on ``sigmas``; (model_slow, model_fast, seconds)."""
    t0 = time.perf_counter()
    tag = uuid.uuid4().hex[:6]
    out = kit.N["GlanceDistillExperts"].execute(
        model=kit.model, positive=positive if positive is not None else kit.train_positive, negative=kit.negative,
        cfg=kit.cfg, latent_image=kit.latent, sigmas=sigmas, switch_sigma=switch, rank=rank, learning_rate=learning_rate,
        steps=steps, rollouts=rollouts, seed=seed, save_name_slow=f"glance_repro/distilled_{tag}_slow",
        save_name_fast=f"glance_repro/distilled_{tag}_fast", cfg_fast=cfg_fast).args
    return out[0], out[1], time.perf_counter() - t0


def build_rows(kit: Kit, paper_switch: float, paper_loras: tuple | None = None, distill_options: dict | None = None,
               eight_captions: bool = True) -> list[Row]:
    """Fit and distil from the training caption(s); the rows' models and schedules (no sampling yet)."""
    options = distill_options or {}
    rows = []
    s10, w10, t10 = fit(kit, 5, 5)
    s6, w6, t6 = fit(kit, 3, 3)
    s55, w55, t55 = fit(kit, 5, 5, switch_sigma=paper_switch)
    rows += [Row("fitted schedule, 10 steps", kit.model, kit.model, s10, w10, t10),
             Row("fitted schedule, 6 steps", kit.model, kit.model, s6, w6, t6),
             Row("fitted schedule, 10 steps (5 slow + 5 fast)", kit.model, kit.model, s55, w55, t55)]
    slow, fast, d10 = distill(kit, s10, w10, **options)
    rows.append(Row("distilled experts, 10 steps", slow, fast, s10, w10, t10 + d10))
    slow, fast, d6 = distill(kit, s6, w6, **options)
    rows.append(Row("distilled experts, 6 steps", slow, fast, s6, w6, t6 + d6))
    if paper_loras is not None:
        rows.append(Row("paper's LoRAs on the fitted schedule", paper_loras[0], paper_loras[1], s55, w55, t55))
    if eight_captions and kit.train_positives:
        many = combine(kit.train_positives)
        s8, w8, t8 = fit(kit, 5, 5, positive=many)
        rows.append(Row("fitted schedule, 10 steps (8 captions)", kit.model, kit.model, s8, w8, t8))
        slow, fast, d8 = distill(kit, s8, w8, positive=many, **options)
        rows.append(Row("distilled experts, 10 steps (8 captions)", slow, fast, s8, w8, t8 + d8))
    return rows


def sample(N, row: Row, positive, negative, cfg: float, seeds: int, seed: int, latent_size: tuple) -> torch.Tensor:
    """``seeds`` images of one prompt (one batch, noise from ``seed``) with the row's models and schedule."""
    latent = {"samples": torch.zeros((seeds, *latent_size))}
    out = N["GlancePhaseKSampler"].execute(
        model_slow=row.model_slow, model_fast=row.model_fast, positive=positive, negative=negative, latent_image=latent,
        seed=seed, steps=len(row.sigmas) - 1, switch_sigma=row.switch, cfg_slow=cfg, cfg_fast=cfg, sampler_name="euler",
        scheduler="simple", sigmas=row.sigmas).args[0]
    return out["samples"].float()


def fitted_rows(kit: Kit, held_out: list, seeds: int, paper_switch: float, paper_loras: tuple | None = None,
                distill_options: dict | None = None, eight_captions: bool = True) -> dict[str, dict]:
    """Every row's samples of the held-out prompts: {row name: {"latent", "steps", "seconds" (sampling),
    "cost_seconds" (fit + distillation), "sigmas", "switch"}}. ``held_out``: (conditioning, seed) per prompt, the
    seeds the runner's other rows use for that prompt (``seeds`` images per prompt, one batch)."""
    size = tuple(kit.latent["samples"].shape[1:])
    out = {}
    for row in build_rows(kit, paper_switch, paper_loras, distill_options, eight_captions):
        t0 = time.perf_counter()
        lat = torch.cat([sample(kit.N, row, p, kit.negative, kit.cfg, seeds, seed, size) for p, seed in held_out])
        out[row.name] = dict(latent=lat, steps=len(row.sigmas) - 1, seconds=time.perf_counter() - t0,
                             cost_seconds=row.cost_seconds, sigmas=[round(float(s), 4) for s in row.sigmas],
                             switch=row.switch)
        print(f"{row.name}: sigmas {out[row.name]['sigmas']} switch {row.switch:.4f}; fit/distill {row.cost_seconds:.1f} s",
              flush=True)
    return out


# --- a try on the kit that today's run.py loads (issue 13 replaces that kit) -----------------------------------

def try_on_current_kit(argv=None) -> None:
    from . import run

    ap = argparse.ArgumentParser(description="The fitted/distilled rows on the current reproduction kit.")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=CFG)
    ap.add_argument("--steps", type=int, default=200, help="distillation steps per expert")
    ap.add_argument("--rollouts", type=int, default=16, help="distillation rollouts")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        bench_args = argparse.Namespace(out=run.HERE / "out", train_index=0)  # its comfy_base/ (git-ignored)
        b = run.load_bench(bench_args)
        held_out = [d for d in range(10) if d != run.TRAIN_DIGIT]
        size = b.image_size // 8
        # Ten prompts only, nine held out: no 8 training captions on this kit.
        kit = Kit(N=b.N, model=b.model, train_positive=b.conds[run.TRAIN_DIGIT], negative=b.negative,
                  latent={"samples": torch.zeros((1, 16, size, size))}, cfg=args.cfg)
        one = {"samples": torch.zeros((1, 16, size, size))}
        t_one, t_fit = [], []
        for _ in range(3):  # interleaved: one 50-step image (KSampler, batch 1) and one fit (8 rollouts x 50 steps)
            t0 = time.perf_counter()
            b.N["KSampler"]().sample(b.model, 0, 50, args.cfg, "euler", "simple", b.conds[run.TRAIN_DIGIT], b.negative, one)
            t_one.append(time.perf_counter() - t0)
            t_fit.append(fit(kit, 5, 5)[2])
        t_ref = (sorted(t_one)[1], sorted(t_fit)[1])
        base = {"base": b.model}
        ref = torch.cat([run.sample(b.N, base, run.Variant("ref", "base", "base", 50), b.conds[d], b.negative,
                                    args.seeds, args.cfg, 1000 + d, size) for d in held_out])
        results = {"base, 50 steps (reference)": dict(latent=ref, steps=50)}
        for n in (10, 6):
            results[f"base, {n} steps"] = dict(latent=torch.cat([
                run.sample(b.N, base, run.Variant("p", "base", "base", n), b.conds[d], b.negative, args.seeds,
                           args.cfg, 1000 + d, size) for d in held_out]), steps=n)
        # The paper's recipe (GlanceTrainLoRA on the one training image) at the paper's timesteps, for comparison.
        slow, _ = run.train_lora(b, "slow", None, "fitted_paper_slow")
        fast, _ = run.train_lora(b, "fast", None, "fitted_paper_fast")
        ten = run.sig(b.timesteps["slow"] + b.timesteps["fast"])
        paper = Row("paper's LoRAs on the paper's timesteps", slow, fast, ten, b.switch)
        results[paper.name] = dict(latent=torch.cat([sample(b.N, paper, b.conds[d], b.negative, args.cfg, args.seeds,
                                                            1000 + d, (16, size, size)) for d in held_out]), steps=10)
        results.update(fitted_rows(kit, [(b.conds[d], 1000 + d) for d in held_out], args.seeds, paper_switch=b.switch,
                                   paper_loras=(slow, fast),
                                   distill_options=dict(steps=args.steps, rollouts=args.rollouts, learning_rate=args.lr),
                                   eight_captions=False))
        for r in results.values():
            r["pixels"] = b.N["VAEDecode"]().decode(b.vae, {"samples": r["latent"]})[0].float().clamp(0, 1)
        report(results, t_ref, args)


def report(results: dict, t_ref: float, args) -> None:
    from .metrics import mse, psnr

    ref = results["base, 50 steps (reference)"]
    plain10 = mse(results["base, 10 steps"]["pixels"], ref["pixels"])
    plain10_latent = mse(results["base, 10 steps"]["latent"], ref["latent"])
    print(f"\ncfg {args.cfg:g}, {args.seeds} seeds per held-out prompt. Medians of 3, interleaved: one 50-step image "
          f"(KSampler, batch 1) {t_ref[0]:.3f} s; one fit (Glance Fit Schedule, 8 rollouts x 50 steps) {t_ref[1]:.3f} s "
          f"= {t_ref[1] / t_ref[0]:.1f} images")
    print("| variant | steps | pixel MSE | pixel PSNR | gap closed vs plain 10 (pixel / latent MSE) | fit + distill s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        m, lm = mse(r["pixels"], ref["pixels"]), mse(r["latent"], ref["latent"])
        gap = "-" if name.endswith("(reference)") else f"{1 - m / plain10:+.0%} / {1 - lm / plain10_latent:+.0%}"
        cost = f"{r['cost_seconds']:.1f}" if "cost_seconds" in r else "-"
        print(f"| {name} | {r['steps']} | {m:.6f} | {psnr(r['pixels'], ref['pixels'], 1.0):.2f} dB | {gap} | {cost} |")


if __name__ == "__main__":
    try_on_current_kit()
