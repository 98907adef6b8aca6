"""Distilled experts on the sampler's own states against the fitted schedule alone (demo kit, CPU, one thread).

    python -m benchmarks.repro.sampler_distill      (from the repository root; benchmarks/README.md gives its time)

On held-out captions (never seen by the base model, the fits or the experts), against the converged picture
(dpmpp_2m at ``--reference-steps`` steps of ``simple``, as ``schedules.py``), pixel PSNR, for euler and dpmpp_2m
at 6 and 10 steps:

- ``fitted``: Glance Fit Schedule for that sampler from ``--fit-captions`` training captions (Conditioning
  (Combine), one rollout each), the base model on both phases;
- Glance Distill Experts for that sampler on that schedule: ``node default`` (the sampler rolled again every 25
  optimiser steps with the current expert), ``rolled once`` (with the base model / the finished slow expert only),
  and higher learning rates (``--variants``, labels of ``VARIANTS`` with ``;`` between).

The earlier objective (Euler steps from the teacher's states) is no longer in the pack; the committed
``out/sampler_distill.json`` was measured at commit dc6e0e5, where this module still compared it
(``old (euler, teacher states)``, and ``teacher states, sampler's step``).

Every distillation learns from the same training captions (``--distill-captions``, by default the fit's;
``--distill-steps`` optimiser steps per expert,
``--rollouts`` teacher rollouts, the node's learning rate), on the row's fitted schedule and switch; every row
samples through Glance Phase KSampler with the row's sampler. Writes ``out/<--name>.json`` (default
``sampler_distill``) and prints a table. ``--reuse-fits out/sampler_distill.json`` takes the fitted schedules of an
earlier run instead of fitting again (the fits are most of the time).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import uuid
from pathlib import Path

import torch

from cli.host import pack_module

from .fitted import default_teacher
from .metrics import psnr
from .schedules import HERE, REFERENCE_SAMPLER, Bench, combine

VARIANTS = {  # label: (refresh, learning rate: None = --learning-rate, rank: -1 = the architecture's)
    "rolled once": (0, None, -1),
    "node default (rolled every 25 steps)": (25, None, -1),
    "every 25 steps, lr 1e-4": (25, 1e-4, -1),
    "every 25 steps, lr 3e-4": (25, 3e-4, -1),
    "every 25 steps, lr 1e-4, rank 32": (25, 1e-4, 32),
}
DEFAULT_VARIANTS = list(VARIANTS)[:2]


def fine_scheduler() -> str:
    """The default teacher grid's scheduler: the fits and the experts' teacher use it."""
    return default_teacher()[1]


def fit(b: Bench, sampler: str, steps: int, fine_steps: int, positive) -> tuple[torch.Tensor, float]:
    slow = steps // 2
    sigmas, switch, _ = b.N["GlanceFitSchedule"].execute(
        model=b.model, positive=positive, negative=b.negative, cfg=b.cfg, latent_image=b.latent(1), steps_slow=slow,
        steps_fast=steps - slow, fine_steps=fine_steps, scheduler=fine_scheduler(), rollouts=len(positive), seed=0,
        switch_sigma=0.0, save_name=f"bench/sd_{sampler}_{steps}_{uuid.uuid4().hex[:6]}", sampler_name=sampler).args
    return sigmas, float(switch)


def distill(b: Bench, args, prompts: list, sigmas, switch: float, sampler: str, refresh: int, learning_rate: float,
            rank: int = -1):
    """The experts as Glance LoRA Loader loads their files: (model_slow, model_fast)."""
    job = pack_module("training.job")
    tag = uuid.uuid4().hex[:6]
    inputs = job.DistillInputs(
        sigmas=tuple(float(s) for s in sigmas), switch_sigma=switch, cfg=b.cfg, steps=args.distill_steps,
        rollouts=args.rollouts, seed=0, save_name_slow=f"bench/sd_{tag}_slow", save_name_fast=f"bench/sd_{tag}_fast",
        fine_steps=args.teacher_steps or args.fine_steps, scheduler=fine_scheduler(), sampler_name=sampler, refresh=refresh,
        learning_rate=learning_rate, rank=rank)
    import folder_paths

    outcome = job.distill_job(b.model, prompts, b.negative, b.latent(1)["samples"], inputs,
                              Path(folder_paths.get_folder_paths("loras")[0]))
    names = outcome.file_names
    return b.N["GlanceLoraLoader"].execute(b.model, names["slow"], 1.0, names["fast"], 1.0).args[:2]


def sample(b: Bench, model_slow, model_fast, sampler: str, sigmas, switch: float) -> torch.Tensor:
    out = []
    for k, p in enumerate(b.held_conds):
        out.append(b.N["GlancePhaseKSampler"].execute(
            model_slow=model_slow, model_fast=model_fast, positive=p, negative=b.negative,
            latent_image=b.latent(b.seeds), seed=1000 + k, steps=len(sigmas) - 1, switch_sigma=switch, cfg_slow=b.cfg,
            cfg_fast=b.cfg, sampler_name=sampler, scheduler="simple", sigmas=sigmas).args[0]["samples"].float())
    return torch.cat(out)


def reused_fits(b: Bench, path: Path, fine_steps: int) -> dict:
    """The fitted schedules of an earlier run's json (its sigmas, rounded there, put back on the fine grid)."""
    import comfy.samplers

    fine = comfy.samplers.calculate_sigmas(b.model.get_model_object("model_sampling"), fine_scheduler(), fine_steps).float()
    out = {}
    for r in json.loads(Path(path).read_text())["rows"]:
        sigmas = torch.stack([fine[int(torch.argmin((fine - s).abs()))] for s in r["sigmas"]])
        out[(r["sampler"], r["steps"])] = (sigmas, r["switch"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--captions", type=int, default=4, help="held-out captions")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per held-out caption")
    ap.add_argument("--fit-captions", type=int, default=4, help="training captions the fits learn from")
    ap.add_argument("--distill-captions", type=int, default=0,
                    help="training captions the experts learn from, one rollout each in turn (0: --fit-captions)")
    ap.add_argument("--fine-steps", type=int, default=100, help="the fit's and the teacher's fine steps (the fit's "
                    "default; both on the fit's default scheduler)")
    ap.add_argument("--teacher-steps", type=int, default=0, help="the distillation's teacher steps (0: --fine-steps)")
    ap.add_argument("--reference-steps", type=int, default=200)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--steps", default="6,10")
    ap.add_argument("--samplers", default="euler,dpmpp_2m")
    ap.add_argument("--distill-steps", type=int, default=400, help="optimiser steps per expert")
    ap.add_argument("--rollouts", type=int, default=16, help="teacher rollouts of the distillation")
    ap.add_argument("--learning-rate", type=float, default=3e-5)
    ap.add_argument("--name", default="sampler_distill", help="the results file's name (.json added)")
    ap.add_argument("--reuse-fits", type=Path, help="take the fitted schedules from an earlier run's json")
    ap.add_argument("--variants", default=";".join(DEFAULT_VARIANTS), help="distillations to run (labels of VARIANTS, ; between)")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with torch.inference_mode():
        run(args, argv)


def run(args, argv) -> None:
    t_start = time.time()
    b = Bench(argparse.Namespace(out=args.out, captions=args.captions, fit_captions=args.fit_captions,
                                 seeds=args.seeds, cfg=args.cfg))
    ref = b.pixels(b.stock(REFERENCE_SAMPLER, "simple", args.reference_steps))

    def score(latent: torch.Tensor) -> float:
        return round(psnr(b.pixels(latent), ref, 1.0), 2)

    many = combine(b.train_conds)
    distill_captions, distill_conds = (b.training_conds(args.distill_captions) if args.distill_captions
                                       else (b.train_captions, b.train_conds))
    prompts = [[entry] for entry in combine(distill_conds)]
    fits = reused_fits(b, args.reuse_fits, args.fine_steps) if args.reuse_fits else {}
    rows = []
    for sampler in args.samplers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            sigmas, switch = fits.get((sampler, steps)) or fit(b, sampler, steps, args.fine_steps, many)
            row = dict(sampler=sampler, steps=steps, sigmas=[round(float(s), 4) for s in sigmas], switch=switch,
                       fitted=score(sample(b, b.model, b.model, sampler, sigmas, switch)), distilled={})
            print(f"{sampler} {steps}: fitted alone {row['fitted']} dB ({time.time() - t_start:.0f} s)", flush=True)
            for label in args.variants.split(";"):
                refresh, rate, rank = VARIANTS[label]
                t0 = time.perf_counter()
                slow, fast = distill(b, args, prompts, sigmas, switch, sampler, refresh, rate or args.learning_rate,
                                     rank)
                value = score(sample(b, slow, fast, sampler, sigmas, switch))
                row["distilled"][label] = dict(pixel_psnr=value, gain_db=round(value - row["fitted"], 2),
                                               seconds=round(time.perf_counter() - t0, 1))
                print(f"  {label}: {value} dB ({value - row['fitted']:+.2f}; {time.perf_counter() - t0:.0f} s)",
                      flush=True)
            rows.append(row)
    out = dict(reference=f"{REFERENCE_SAMPLER}, {args.reference_steps} steps of simple", rows=rows,
               settings=dict(held_out_captions=b.held_captions, seeds_per_caption=args.seeds,
                             fit_captions=b.train_captions, distill_captions=distill_captions, fine_steps=args.fine_steps, cfg=args.cfg,
                             teacher_steps=args.teacher_steps or args.fine_steps, distill_steps=args.distill_steps, rollouts=args.rollouts,
                             learning_rate=args.learning_rate, threads=1,
                             command=" ".join(["python -m benchmarks.repro.sampler_distill", *map(shlex.quote, argv)])),
               seconds=round(time.time() - t_start, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    print(render(out))
    print(f"done in {time.time() - t_start:.0f} s")


def render(out: dict) -> str:
    labels = list(dict.fromkeys(k for r in out["rows"] for k in r["distilled"]))
    lines = ["| sampler | steps | fitted alone | " + " | ".join(labels) + " |",
             "|---|---:|---:|" + "---:|" * len(labels)]
    for r in out["rows"]:
        cells = [f"{r['distilled'][k]['pixel_psnr']:.1f} ({r['distilled'][k]['gain_db']:+.1f})" if k in r["distilled"]
                 else "-" for k in labels]
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['fitted']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
