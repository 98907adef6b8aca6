"""The demo base model: an SD3-family MMDiT trained from scratch by flow matching on the digits' latents.

Conditioning comes from the host's own CLIP (type sd3) with the kit's deterministic CLIP-L, prompt
"a handwritten digit N"; 10% of samples get the empty prompt so CFG works. Sigmas follow the stock SD3
sampling (shift 3.0), the prediction is the host's flow target ``noise - x0`` at timestep ``1000 * sigma``.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from . import data

HIDDEN, PATCH, CHANNELS, POS_EMBED_MAX = 128, 2, 16, 16


def shift_sigma(t: torch.Tensor) -> torch.Tensor:
    """The stock SD3 sampling's time shift (the kit's shift, through the host's own formula)."""
    from comfy.model_sampling import time_snr_shift
    from cli.model_kit import SHIFT

    return time_snr_shift(SHIFT, t)


def unet_config(hidden: int = HIDDEN) -> dict:
    return dict(
        in_channels=CHANNELS, patch_size=PATCH, out_channels=CHANNELS, depth=hidden // 64, input_size=None,
        adm_in_channels=2048, num_patches=POS_EMBED_MAX ** 2, pos_embed_max_size=POS_EMBED_MAX,
        pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": hidden}},
    )


def build_mmdit(seed: int, hidden: int = HIDDEN):
    """The host's SD3 model class with a DiT-style init (adaLN-Zero, zero output layer, sin-cos positions)."""
    import comfy.supported_models as sm
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    config = sm.SD3(unet_config(hidden))
    config.set_inference_dtype(torch.float32, None)
    dm = config.get_model({}, device="cpu").diffusion_model
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dm.named_parameters():
            if p.ndim >= 2:
                fan_in, fan_out = p[0].numel(), p.shape[0]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, m in dm.named_modules():
            if name.endswith("adaLN_modulation"):
                m[-1].weight.zero_()
                m[-1].bias.zero_()
        dm.final_layer.linear.weight.zero_()
        dm.final_layer.linear.bias.zero_()
        pos = get_2d_sincos_pos_embed(hidden, POS_EMBED_MAX)
        dm.pos_embed.copy_(torch.from_numpy(pos).float().unsqueeze(0))
    return dm


def encode_prompts(prompts: list[str]):
    """[(cond [1, 77, 4096], pooled [1, 2048])] through the host's CLIP with the kit's CLIP-L."""
    import comfy.sd
    from cli import model_kit

    clip = comfy.sd.load_text_encoder_state_dicts([model_kit.clip_l_state_dict()], clip_type=comfy.sd.CLIPType.SD3)
    out = []
    with torch.no_grad():
        for text in prompts:
            cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            out.append((cond.detach().float(), pooled.detach().float()))
    return out


def load_vae(path: Path):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> model-space latents (the SD3 latent format's process_in)."""
    import comfy.latent_formats

    fmt = comfy.latent_formats.SD3()
    with torch.no_grad():
        latents = [vae.encode(images[i:i + 128].movedim(1, -1)) for i in range(0, len(images), 128)]
    return fmt.process_in(torch.cat(latents).float()).detach()


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents -> [N, H, W, 3] images in [0, 1]."""
    import comfy.latent_formats

    with torch.no_grad():
        return vae.decode(comfy.latent_formats.SD3().process_out(latents)).float().clamp(0, 1)


@torch.no_grad()
def euler_sample(dm, noise, cond, pooled, steps: int = 50, cfg: float = 1.0, uncond=None):
    sigmas = torch.cat([shift_sigma(torch.linspace(1, 0, steps + 1)[:-1]), torch.zeros(1)])
    x = noise * sigmas[0]
    for i in range(steps):
        t = torch.full((len(x),), float(sigmas[i]) * 1000)
        v = dm(x, t, context=cond, y=pooled)
        if cfg != 1.0:
            v_u = dm(x, t, context=uncond[0].expand_as(cond), y=uncond[1].expand_as(pooled))
            v = v_u + cfg * (v - v_u)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def train_mmdit(vae_path: Path, quick: bool = False, seed: int = 0, log=print) -> dict:
    from .metrics import DigitJudge

    steps, batch = (150, 32) if quick else (2500, 48)
    images, labels = data.load_digits()
    train_idx, test_idx = data.split(labels)
    vae = load_vae(vae_path)
    latents = encode_images(vae, images[train_idx])
    train_labels = labels[train_idx]
    log(f"latents {tuple(latents.shape)} mean {latents.mean():.3f} std {latents.std():.3f}")
    enc = encode_prompts([data.prompt(d) for d in range(10)] + [""])
    ctx = torch.cat([c for c, _ in enc])  # [11, 77, 4096]; index 10 is the empty prompt
    pooled = torch.cat([p for _, p in enc])

    dm = build_mmdit(seed)
    # The context embedder is linear: embed the 11 distinct prompts once per step, then gather (same maths).
    embedder = dm.context_embedder
    dm.context_embedder = torch.nn.Identity()
    ema = copy.deepcopy(dm).requires_grad_(False)
    ema_embedder = copy.deepcopy(embedder).requires_grad_(False)
    params = [p for p in dm.parameters() if p.requires_grad] + list(embedder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * (1 - s / steps)))
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    for step in range(steps):
        pick = torch.randint(len(latents), (batch,), generator=gen)
        x0, cls = latents[pick], train_labels[pick].clone()
        cls[torch.rand(batch, generator=gen) < 0.1] = 10
        sigma = shift_sigma(torch.rand(batch, generator=gen)).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sigma) * x0 + sigma * noise
        v = dm(xt, sigma.flatten() * 1000, context=embedder(ctx)[cls], y=pooled[cls])
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (step + 1) / (step + 10))
            for pe, p in zip([*ema.parameters(), *ema_embedder.parameters()], [*dm.parameters(), *embedder.parameters()]):
                pe.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"mmdit step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    ema.context_embedder = ema_embedder
    ema.eval()

    judge = DigitJudge(images[train_idx], labels[train_idx])
    n = 100
    want = torch.arange(n) % 10
    noise = torch.randn((n, CHANNELS, 8, 8), generator=torch.Generator().manual_seed(1234))
    for cfg in (1.0, 2.0):
        lat = euler_sample(ema, noise, ctx[want], pooled[want], 50, cfg, (ctx[10:], pooled[10:]))
        log(f"50-step samples, cfg {cfg}: digit classifier accuracy {judge.accuracy(decode_latents(vae, lat), want):.2f} "
            f"(real test digits: {judge.accuracy(images[test_idx], labels[test_idx]):.2f})")
    return {k: v.detach().half() for k, v in ema.state_dict().items()}
