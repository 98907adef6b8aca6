"""What moves Glance Distill Experts on held-out captions: learning rate, steps and rank, from ONE training caption.

    python -m benchmarks.repro.distill_sweep     (from the repository root; about 5 minutes here, 1 thread)

On the demo kit (as ``run.py`` loads it): Glance Fit Schedule fits 5 + 5 steps on the training caption; each
setting then distils the experts on that schedule from the same caption, and samples 20 held-out captions x 2 seeds
and the training caption x 4 seeds. Pixel MSE against the base model's 50-step samples from the same seeds; the
ratio is against the fitted schedule alone (below 1: the experts help). Then other prompts to distil from
(``PROMPT_TRIALS``), and each expert of the default run alone (the other phase on the base model). Writes
``out/distill_sweep.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import fitted, run
from .metrics import mse

SETTINGS = (  # (steps, learning rate, rank); the node's defaults first
    (200, 3e-5, -1), (50, 3e-5, -1), (100, 1e-5, -1), (200, 1e-5, -1), (400, 3e-6, -1), (200, 3e-5, 4), (200, 1e-4, -1),
)
# Other prompts to distil from (node defaults otherwise).
PROMPT_TRIALS = ("the caption and the empty prompt (Conditioning (Combine))", "the empty prompt only",
                 "8 training captions, 800 steps")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=run.HERE / "out")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()
    with torch.inference_mode():
        b = run.load_bench(argparse.Namespace(out=args.out, caption=run.TRAIN_CAPTION, prompts=args.prompts, cfg=args.cfg))
        size = (16, b.image_size // 8, b.image_size // 8)
        kit = fitted.Kit(N=b.N, model=b.model, train_positive=b.train.positive, negative=b.negative,
                         latent={"samples": torch.zeros((1, *size))}, cfg=b.cfg)
        base = {"base": b.model}

        def decode(latent):
            return b.N["VAEDecode"]().decode(b.vae, {"samples": latent})[0].float().clamp(0, 1)

        reference = run.Variant("reference", "plain", 50)
        held_ref = decode(torch.cat([run.sample_plain(b, base, reference, p, 2, 1000 + k) for k, p in enumerate(b.prompts)]))
        train_ref = decode(run.sample_plain(b, base, reference, b.train, 4, 7))

        def errors(row: fitted.Row) -> tuple[float, float]:
            held = torch.cat([fitted.sample(b.N, row, p.positive, b.negative, b.cfg, 2, 1000 + k, size)
                              for k, p in enumerate(b.prompts)])
            train = fitted.sample(b.N, row, b.train.positive, b.negative, b.cfg, 4, 7, size)
            return mse(decode(held), held_ref), mse(decode(train), train_ref)

        sigmas, switch, _ = fitted.fit(kit, 5, 5)
        fit_held, fit_train = errors(fitted.Row("fitted", b.model, b.model, sigmas, switch))
        lines = ["| distillation (steps, lr, rank; prompts) | held-out pixel MSE | vs fitted alone | training caption pixel MSE | vs fitted alone |",
                 "|---|---:|---:|---:|---:|",
                 f"| none (fitted schedule alone) | {fit_held:.6f} | 1.00 | {fit_train:.6f} | 1.00 |"]
        def add(label: str, slow, fast) -> None:
            held, train = errors(fitted.Row(label, slow, fast, sigmas, switch))
            lines.append(f"| {label} | {held:.6f} | {held / fit_held:.2f} | {train:.6f} | {train / fit_train:.2f} |")
            print(lines[-1], flush=True)

        experts = {}
        for steps, lr, rank in SETTINGS:
            slow, fast, _ = fitted.distill(kit, sigmas, switch, steps=steps, learning_rate=lr, rank=rank)
            experts.setdefault("default", (slow, fast))
            add(f"{steps}, {lr:g}, {'16 (default)' if rank == -1 else rank}", slow, fast)
        eight = run.eight_training_captions(b)  # the reproduction's "8 captions" rows' prompts
        encode = b.N["CLIPTextEncode"]()
        prompts = {PROMPT_TRIALS[0]: (fitted.combine([b.train.positive, b.negative]), 200),
                   PROMPT_TRIALS[1]: (b.negative, 200),
                   PROMPT_TRIALS[2]: (fitted.combine([encode.encode(b.clip, b.data.captions[i])[0] for i in eight]), 800)}
        for label, (positive, steps) in prompts.items():
            slow, fast, _ = fitted.distill(kit, sigmas, switch, positive=positive, steps=steps)
            add(f"from {label}", slow, fast)
        slow, fast = experts["default"]
        add("default, Slow expert only (fast phase on the base)", slow, b.model)
        add("default, Fast expert only (slow phase on the base)", b.model, fast)
    text = "\n".join([
        f"Command: `python -m benchmarks.repro.distill_sweep` ({(time.time() - t_start) / 60:.1f} min on this CPU, 1 thread).",
        "",
        f"Fit and distillation from \"{b.train.caption}\" only; {len(b.prompts)} held-out captions x 2 seeds, the training "
        f"caption x 4 other seeds; CFG {b.cfg:g}; fitted 5 + 5 steps ({', '.join(f'{float(s):.4f}' for s in sigmas)}).",
        "",
        *lines,
    ]) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
