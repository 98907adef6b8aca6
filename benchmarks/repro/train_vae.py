"""The demo kit's VAE: the host's TAESD architecture (16 latent channels, SD3 layout) trained from scratch on the
training emoji (held-out captions excluded), first at 32 px, then at 64 px. Resumable from its checkpoint."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from cli import emoji_data

# (image size, batch, optimiser steps, peak learning rate): learn colours and shapes small, then at 64 px.
STAGES = ((32, 16, 1000, 2e-3), (64, 8, 250, 5e-4))
QUICK_STAGES = ((32, 8, 20, 2e-3), (64, 4, 10, 5e-4))
CHECKPOINT_EVERY = 50
# The std of the latents the base model sees (vae_scale/vae_shift below). Below 1, an image's content is decided at
# lower noise, where a plain 10-step schedule takes its largest steps: the few-step gap this kit exists to show.
LATENT_STD = 0.5


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


def _lr(peak: float, step: int, steps: int) -> float:
    """Warm-up over 5% of the stage, then cosine down to a tenth: a function of the step only (resumable)."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


def train_vae(checkpoint: Path, stages=STAGES, seed: int = 0, log=print) -> dict:
    """Train (or resume from ``checkpoint``) and return the VAE state dict for the stock VAELoader (fp16)."""
    import comfy.latent_formats
    import comfy.taesd.taesd as taesd

    data = emoji_data.load()
    train, held = data.indices(held_out=False), data.indices(held_out=True)
    gen = torch.Generator().manual_seed(seed)
    enc, dec = taesd.Encoder(16), taesd.Decoder(16)
    _init_taesd(enc, gen)
    _init_taesd(dec, gen)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    stage0, step0 = 0, 0
    if checkpoint.is_file():
        ck = torch.load(checkpoint, weights_only=True)
        enc.load_state_dict(ck["enc"])
        dec.load_state_dict(ck["dec"])
        opt.load_state_dict(ck["opt"])
        stage0, step0 = ck["stage"], ck["step"]
        log(f"vae: resumed from {checkpoint} at stage {stage0} step {step0}")
    t0 = time.time()
    for n, (size, batch, steps, peak) in enumerate(stages):
        if n < stage0:
            continue
        images = data.tensor(train, size)
        for step in range(step0 if n == stage0 else 0, steps):
            g = torch.Generator().manual_seed(seed * 1_000_003 + n * 100_000 + step)  # per step: resumes identically
            x = images[torch.randint(len(images), (batch,), generator=g)]
            flip = torch.rand(batch, generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            for group in opt.param_groups:
                group["lr"] = _lr(peak, step, steps)
            z = enc(x)
            z_noisy = z + 0.05 * z.detach().std() * torch.randn(z.shape, generator=g)
            loss = torch.nn.functional.mse_loss(dec(z_noisy), x) + 1e-4 * z.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done = step + 1
            if done % CHECKPOINT_EVERY == 0 or done == steps:
                nxt = (n, done) if done < steps else (n + 1, 0)
                _save(checkpoint, dict(enc=enc.state_dict(), dec=dec.state_dict(), opt=opt.state_dict(), stage=nxt[0], step=nxt[1]))
            if step % 25 == 0 or done == steps:
                log(f"vae {size}px step {step}/{steps} loss {loss.item():.5f} ({time.time() - t0:.0f}s)")
        step0 = 0
    with torch.no_grad():
        x = data.tensor(train[:512])
        z = torch.cat([enc(x[i:i + 64]) for i in range(0, len(x), 64)])
        held_x = data.tensor(held)
        back = torch.cat([dec(enc(held_x[i:i + 64])) for i in range(0, len(held_x), 64)])
    mse = torch.nn.functional.mse_loss(back.clamp(0, 1), held_x).item()
    mean, std = z.mean().item(), z.std().item()
    log(f"vae: held-out reconstruction PSNR {10 * math.log10(1 / mse):.2f} dB at 64 px; latent mean {mean:.3f} std {std:.3f}")
    sd = {f"taesd_encoder.{k}": v.half() for k, v in enc.state_dict().items()}
    sd.update({f"taesd_decoder.{k}": v.half() for k, v in dec.state_dict().items()})
    # The host's TAESD maps encoder output e to e / vae_scale + vae_shift; the SD3 latent format then applies
    # (x - 0.0609) * 1.5305. These two values make the model's latents zero-mean with std LATENT_STD.
    fmt = comfy.latent_formats.SD3()
    scale = fmt.scale_factor * std / LATENT_STD
    sd["vae_scale"] = torch.tensor(scale)
    sd["vae_shift"] = torch.tensor(fmt.shift_factor - mean / scale)
    return sd


def _save(path: Path, state: dict) -> None:
    from schedules.atomic_file import write_atomic

    write_atomic(path, lambda tmp: torch.save(state, tmp))
