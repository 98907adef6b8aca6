"""Trains the demo model kit's VAE and base model from scratch on the digits (CPU, host classes).

    python -m benchmarks.repro.train_models [--quick]     (from the repository root)

writes ``weights/glance_demo_vae.safetensors`` (the host's TAESD architecture, 16 latent channels, loaded by
the stock VAELoader from models/vae) and ``weights/glance_demo_mmdit.safetensors`` (an SD3-family MMDiT,
loaded by the stock UNETLoader). The base model is conditioned through the host's CLIPLoader (type sd3) on
``cli/model_kit.py``'s deterministic random CLIP-L with prompts "a handwritten digit N".
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

from cli.host import start_in_process
from cli.model_kit import MMDIT_NAME, VAE_NAME, WEIGHTS, save_atomic

from . import data


# ---- VAE ---------------------------------------------------------------------------------------------------

def _init_taesd(module: torch.nn.Module, gen: torch.Generator) -> None:
    """LeCun init (the host's layers skip init); each residual block starts as identity for fast training."""
    import comfy.taesd.taesd as taesd

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(1.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        if isinstance(m, taesd.Block):
            with torch.no_grad():
                m.conv[4].weight.zero_()


VAE_STAGES = ((32, 8, 300), (64, 4, 150))  # (image size, batch, steps): learn the digits small, then at 64 px
VAE_STAGES_QUICK = ((32, 8, 30), (64, 4, 20))


def train_vae(stages=VAE_STAGES, seed: int = 0, resume: Path | None = None, log=print) -> dict:
    """TAESD encoder/decoder trained on the digits; ``resume``: start from a saved file, run only the last stage."""
    import comfy.latent_formats
    import comfy.taesd.taesd as taesd
    import comfy.utils

    gen = torch.Generator().manual_seed(seed)
    enc, dec = taesd.Encoder(16), taesd.Decoder(16)
    _init_taesd(enc, gen)
    _init_taesd(dec, gen)
    if resume is not None:
        sd = comfy.utils.load_torch_file(str(resume))
        enc.load_state_dict({k[len("taesd_encoder."):]: v.float() for k, v in sd.items() if k.startswith("taesd_encoder.")})
        dec.load_state_dict({k[len("taesd_decoder."):]: v.float() for k, v in sd.items() if k.startswith("taesd_decoder.")})
        stages = stages[-1:]
    params = list(enc.parameters()) + list(dec.parameters())
    t0 = time.time()
    for n, (size, batch, steps) in enumerate(stages):
        images, _ = data.load_digits(size)
        gen = torch.Generator().manual_seed(seed + 1 + n)
        opt = torch.optim.Adam(params, lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3 if n == 0 else 5e-4, total_steps=steps, pct_start=0.1)
        for step in range(steps):
            x = images[torch.randint(len(images), (batch,), generator=gen)]
            z = enc(x)
            z_noisy = z + 0.05 * z.detach().std() * torch.randn(z.shape, generator=gen)
            loss = torch.nn.functional.mse_loss(dec(z_noisy), x) + 1e-4 * z.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step % 10 == 0 or step == steps - 1:
                log(f"vae {size}px step {step}/{steps} loss {loss.item():.5f} ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        z = torch.cat([enc(images[i:i + 128]) for i in range(0, len(images), 128)])
        recon = torch.cat([dec(z[i:i + 128]) for i in range(0, len(z), 128)])
    mse = torch.nn.functional.mse_loss(recon, images).item()
    mean, std = z.mean().item(), z.std().item()
    log(f"vae: reconstruction PSNR {10 * math.log10(1 / mse):.2f} dB at {images.shape[-1]} px; latent mean {mean:.3f} std {std:.3f}")
    sd = {f"taesd_encoder.{k}": v.half() for k, v in enc.state_dict().items()}
    sd.update({f"taesd_decoder.{k}": v.half() for k, v in dec.state_dict().items()})
    # The host's TAESD maps encoder output e to e / vae_scale + vae_shift; the SD3 latent format then applies
    # (x - 0.0609) * 1.5305. These two values make the model's latents zero-mean, unit-std.
    fmt = comfy.latent_formats.SD3()
    sd["vae_scale"] = torch.tensor(fmt.scale_factor * std)
    sd["vae_shift"] = torch.tensor(fmt.shift_factor - mean / (fmt.scale_factor * std))
    return sd


def train_weights(out: Path, quick: bool = False, only: str | None = None, vae_resume: Path | None = None) -> None:
    """Train the VAE and/or the base model into ``out``, in the host running in this process (else a new one)."""
    base = os.environ.get("GLANCE_REPRO_BASE")
    start_in_process(Path(base) if base else None)
    if only in (None, "vae"):
        sd = train_vae(VAE_STAGES_QUICK if quick else VAE_STAGES, resume=vae_resume)
        save_atomic(sd, out / VAE_NAME)
    if only in (None, "mmdit"):
        from .train_base import train_mmdit

        save_atomic(train_mmdit(out / VAE_NAME, quick=quick), out / MMDIT_NAME)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short training (for tests; lower quality)")
    ap.add_argument("--only", choices=["vae", "mmdit"], help="train just one of the two")
    ap.add_argument("--vae-resume", type=Path, help="continue from a VAE file: run only the last (64 px) stage")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="output folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_weights(args.out, args.quick, args.only, args.vae_resume)


if __name__ == "__main__":
    main()
