"""What was tried for Euler distillation at 6 steps: other losses and more prompts, scored on held-out AND training captions.

    python -m benchmarks.repro.distill_tries --variants node,state,unroll,end [--distill-captions 32 --rollouts 32]

Same kit, fit, reference and held-out images as ``sampler_distill.py`` (the fit of ``--reuse-fits``, default
``out/sampler_distill.json``); every distillation is Glance Distill Experts' job (``training.job.distill_job``) with
the module's step loss swapped for the run where a variant says so (an experiment on our own code, in this process
only; the host is untouched). Besides the held-out score it scores the first 4 training captions (new noise: seeds
1000 + k, the teacher's rollouts use 0..rollouts-1), which tells fitting the training prompts from generalising.

Variants (``--variants``, comma-separated):

- ``node``: the node's loss (one sampler step from its own state, velocity MSE to the teacher's next state);
- ``state``: the same step, MSE of the state (x_next against the teacher's x_k) instead of the velocity;
- ``unroll``: from a random segment, the sampler's steps through the rest of the expert's phase with gradient
  through all of them, the mean state MSE to the teacher at every point;
- ``end``: as ``unroll``, the state MSE at the end of the phase only.

``--runs "node 32 32 1e-4 32; unroll 4 16 3e-5 -1"`` runs several settings in one process instead (each: variant,
training captions, rollouts, learning rate, rank; the references are made once). Prints one line per run (held-out
and training PSNR, gain over the fitted schedule alone).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cli.host import pack_module

from . import sampler_distill as sd
from .metrics import psnr
from .schedules import HERE, REFERENCE_SAMPLER, Bench, combine


def unrolled_loss(distill, end_only: bool):
    """A ``SegmentStep.__call__`` whose loss runs the sampler through the rest of the expert's phase."""
    mse = torch.nn.functional.mse_loss

    def call(self, step: int) -> torch.Tensor:
        r, first = self.draw(step)
        device, sampler = self.session.device, self.session.settings.sampler
        x = self.student.x[r][first:first + 1].to(device)
        old = self.student.d[r][first - 1:first].to(device) if first > 0 else None
        losses, last = [], self.steps[-1]
        for j in range(first, last + 1):
            s_i, s_k = float(self.coarse[j]), float(self.coarse[j + 1])
            with self.session.precision.autocast_context(device):
                d = self.guider(x, torch.full((1,), s_i, device=device), model_options=self.model_options,
                                seed=self.session.settings.seed).float()
            cx, cd, co = distill.coefficients(sampler, float(self.coarse[j - 1]) if j > 0 else None, s_i, s_k)
            x = cx * x + cd * d + (co * old if co != 0.0 and old is not None else 0.0)
            old = d
            if not end_only or j == last:
                losses.append(mse(x, self.teacher.states[r][j + 1:j + 2].to(device).clone()))
        return torch.stack(losses).mean()

    return call


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--reuse-fits", type=Path, default=HERE / "out" / "sampler_distill.json")
    ap.add_argument("--variants", default="node,state,unroll,end")
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--distill-captions", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--distill-steps", type=int, default=400)
    ap.add_argument("--learning-rate", type=float, default=3e-5)
    ap.add_argument("--rank", type=int, default=-1)
    ap.add_argument("--runs", default="", help="'variant captions rollouts lr rank' entries, ; between (overrides the above)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with torch.inference_mode():
        run(args)


def run(args) -> None:
    t_start = time.time()
    b = Bench(argparse.Namespace(out=args.out, captions=4, fit_captions=4, seeds=2, cfg=5.0))
    distill = pack_module("training.distill")
    sigmas, switch = sd.reused_fits(b, args.reuse_fits, 100)[(args.sampler, args.steps)]
    sets = {"held-out": b.held_conds, "training": b.train_conds}
    refs = {}
    for name, conds in sets.items():
        b.held_conds = conds
        refs[name] = b.pixels(b.stock(REFERENCE_SAMPLER, "simple", 200))

    def score(slow, fast) -> dict:
        out = {}
        for name, conds in sets.items():
            b.held_conds = conds
            out[name] = round(psnr(b.pixels(sd.sample(b, slow, fast, args.sampler, sigmas, switch)), refs[name], 1.0), 2)
        return out

    fitted = score(b.model, b.model)
    print(f"{args.sampler} {args.steps}: fitted alone {fitted} ({time.time() - t_start:.0f} s)", flush=True)
    runs = ([(v, args.distill_captions, args.rollouts, args.learning_rate, args.rank) for v in args.variants.split(",")]
            if not args.runs else [(v, int(c), int(r), float(lr), int(k)) for v, c, r, lr, k in
                                   (entry.split() for entry in args.runs.split(";") if entry.strip())])
    node_call, node_coefficients = distill.SegmentStep.__call__, distill.coefficients
    for variant, captions, rollouts, learning_rate, rank in runs:
        _, conds = b.training_conds(captions)
        prompts = [[entry] for entry in combine(conds)]
        options = argparse.Namespace(distill_steps=args.distill_steps, rollouts=rollouts, teacher_steps=0, fine_steps=100)
        t0 = time.time()
        if variant in ("unroll", "end"):
            distill.SegmentStep.__call__ = unrolled_loss(distill, end_only=variant == "end")
        elif variant == "state":
            distill.coefficients = _recording(node_coefficients)
            distill.SegmentStep.__call__ = lambda self, step: node_call(self, step) * distill.coefficients.gap ** 2
        elif variant != "node":
            raise SystemExit(f"unknown variant {variant!r}: node, state, unroll or end")
        try:
            slow, fast = sd.distill(b, options, prompts, sigmas, switch, args.sampler, 25, learning_rate, rank)
        finally:
            distill.SegmentStep.__call__, distill.coefficients = node_call, node_coefficients
        s = score(slow, fast)
        print(f"{variant} ({captions} captions, {rollouts} rollouts, rank {rank}, lr {learning_rate:g}): held-out {s['held-out']} ({s['held-out'] - fitted['held-out']:+.2f}), training "
              f"{s['training']} ({s['training'] - fitted['training']:+.2f}); {time.time() - t0:.0f} s", flush=True)


def _recording(coefficients):
    """``coefficients`` that keeps the last step's size (s_i - s_k) in ``.gap`` (the state loss scales by it)."""
    def wrapped(sampler, s_prev, s_i, s_k):
        wrapped.gap = s_i - s_k
        return coefficients(sampler, s_prev, s_i, s_k)

    wrapped.gap = 1.0
    return wrapped


if __name__ == "__main__":
    main()
