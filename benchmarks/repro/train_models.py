"""Builds the demo model kit's weights from scratch on the training emoji (CPU, the host's own classes).

    python -m benchmarks.repro.train_models          (from the repository root, with a ComfyUI host found as
                                                      for the tests; about 35 min of CPU on one core)

Writes ``cli/kit/glance_demo_vae.safetensors`` (the host's TAESD architecture, 16 latent channels, for the stock
VAELoader) and ``cli/kit/glance_demo_mmdit.safetensors`` (an SD3-family MMDiT for the stock UNETLoader),
conditioned through the stock CLIPLoader (type sd3) on ``cli/model_kit.py``'s deterministic CLIP-L with the
emoji captions of ``cli/emoji_data.py`` (held-out captions never used). Steps, each resumable: ``captions``
(encode the training captions once), ``vae``, ``mmdit``; checkpoints and caches go to ``--build`` (default
``~/.cache/comfyui-glance/kit-build``), so an interrupted build continues where it stopped; delete that folder
to start over. ``--quick`` runs a few steps of each into ``BUILD/quick`` (never over the committed files).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cli.host import start_in_process
from cli.model_kit import KIT, MMDIT_NAME, VAE_NAME, save_safetensors

DEFAULT_BUILD = Path.home() / ".cache" / "comfyui-glance" / "kit-build"
STEPS = ("captions", "vae", "mmdit")


def build(out: Path, build_dir: Path, only=STEPS, quick: bool = False, log=print) -> None:
    from . import train_base, train_vae

    start_in_process()
    build_dir.mkdir(parents=True, exist_ok=True)
    if quick and Path(out).resolve() == KIT.resolve():
        out = build_dir / "quick"  # useless weights: never over the committed kit
    t0 = time.time()
    if "captions" in only:
        train_base.caption_cache(build_dir, log=log)
        log(f"captions done ({time.time() - t0:.0f}s)")
    if "vae" in only:
        stages = train_vae.QUICK_STAGES if quick else train_vae.STAGES
        ckpt = build_dir / ("vae-quick.ckpt" if quick else "vae.ckpt")
        save_safetensors(train_vae.train_vae(ckpt, stages, log=log), out / VAE_NAME)
        log(f"vae done ({time.time() - t0:.0f}s)")
    if "mmdit" in only:
        sd, meta = train_base.train_mmdit(out / VAE_NAME, build_dir, quick=quick, log=log)
        save_safetensors(sd, out / MMDIT_NAME, meta)
        log(f"mmdit done ({time.time() - t0:.0f}s)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=STEPS, action="append", help="run just this step (repeatable)")
    ap.add_argument("--quick", action="store_true", help="a few steps of each (to check the script; useless weights)")
    ap.add_argument("--out", type=Path, default=KIT, help=f"output folder (default {KIT})")
    ap.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="checkpoints and caches (resume from here)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log_path = args.build / "build.log"
    args.build.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    build(args.out, args.build, tuple(args.only or STEPS), args.quick, log)


if __name__ == "__main__":
    main()
