"""The demo base model: an SD3-family MMDiT trained from scratch by flow matching on the training emoji's latents.

Conditioning comes from the host's own CLIP (type sd3) with the kit's deterministic CLIP-L and the emoji captions
("red apple, food and drink"); 10% of samples get the empty prompt so CFG works. Sigmas follow the stock SD3
sampling (shift 3.0), the prediction is the host's flow target ``noise - x0`` at timestep ``1000 * sigma``.
Constant learning rate after a warm-up, weights averaged (EMA): a run can be resumed and extended.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path

import torch

from cli import emoji_data

HIDDEN, PATCH, CHANNELS, POS_EMBED_MAX = 128, 2, 16, 16
CLIP_WIDTH = 768  # the CLIP-L part of the sd3 conditioning; the other 3328 context and 1280 pooled columns are 0
STEPS, BATCH, LR, EMA = 3000, 64, 1e-3, 0.999
QUICK_STEPS = 20
CHECKPOINT_EVERY = 200


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
    return dm.requires_grad_(True)


def load_clip():
    import comfy.sd
    from cli import model_kit

    return comfy.sd.load_text_encoder_state_dicts([model_kit.clip_l_state_dict()], clip_type=comfy.sd.CLIPType.SD3)


def encode_prompts(clip, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [n, 77, 768], pooled [n, 768]): the CLIP-L columns of the host's sd3 conditioning."""
    ctx, pooled = [], []
    with torch.no_grad():
        for text in prompts:
            c, p = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            ctx.append(c[:, :, :CLIP_WIDTH].float())
            pooled.append(p[:, :CLIP_WIDTH].float())
    return torch.cat(ctx), torch.cat(pooled)


def caption_cache(build_dir: Path, log=print) -> dict:
    """The training captions and "" (last), encoded once: {captions, ctx fp16 [n, 77, 768], pooled fp16 [n, 768]}."""
    from schedules.atomic_file import write_atomic
    from cli import model_kit

    data = emoji_data.load()
    captions = [data.captions[i] for i in data.indices(held_out=False)] + [""]
    key = hashlib.sha1(("\n".join(captions) + f"|{model_kit.CLIP_SEED}").encode()).hexdigest()
    path = build_dir / "captions.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            return cached
    log(f"encoding {len(captions)} captions with the kit's CLIP-L (about 0.2 s each)")
    clip = load_clip()
    t0 = time.time()
    ctx, pooled = [], []
    for i in range(0, len(captions), 100):
        c, p = encode_prompts(clip, captions[i:i + 100])
        ctx.append(c.half())
        pooled.append(p.half())
        log(f"captions {min(i + 100, len(captions))}/{len(captions)} ({time.time() - t0:.0f}s)")
    out = dict(key=key, captions=captions, ctx=torch.cat(ctx), pooled=torch.cat(pooled))
    write_atomic(path, lambda tmp: torch.save(out, tmp))
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


def pad_conditioning(ctx: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-L columns -> the full sd3 widths (context 4096, pooled 2048; the rest zero), as the host passes them."""
    return (torch.nn.functional.pad(ctx.float(), (0, 4096 - ctx.shape[-1])),
            torch.nn.functional.pad(pooled.float(), (0, 2048 - pooled.shape[-1])))


@torch.no_grad()
def euler_sample(dm, noise, cond, pooled, steps: int = 50, cfg: float = 1.0, uncond=None):
    """Euler over shift(linspace(1, 0)) (the stock 'simple' schedule up to its 1000-entry table); full-width conds."""
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


class _Embed(torch.nn.Module):
    """The context embedder on the CLIP-L columns only: the same maths, since the other columns are always 0."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, ctx):
        return torch.nn.functional.linear(ctx, self.linear.weight[:, :ctx.shape[-1]], self.linear.bias)


def train_mmdit(vae_path: Path, build_dir: Path, quick: bool = False, seed: int = 0, steps: int | None = None,
                log=print) -> tuple[dict, dict]:
    """Train (or resume from ``build_dir/mmdit.ckpt``) the base model; returns (fp16 state dict, file metadata)."""
    from schedules.atomic_file import write_atomic

    steps = steps or (QUICK_STEPS if quick else STEPS)
    data = emoji_data.load()
    train = data.indices(held_out=False)
    cache = caption_cache(build_dir, log=log)
    assert cache["captions"][:-1] == [data.captions[i] for i in train]
    ctx_l, pooled_l = cache["ctx"], cache["pooled"].float()  # index len(train) is the empty prompt
    empty = len(train)
    vae = load_vae(vae_path)
    latents = encode_images(vae, data.tensor(train))
    log(f"latents {tuple(latents.shape)} mean {latents.mean():.3f} std {latents.std():.3f}")

    dm = build_mmdit(seed)
    dm.context_embedder = _Embed(dm.context_embedder)  # wraps the same Linear: its weights are trained and saved
    ema = copy.deepcopy(dm).requires_grad_(False)
    params = list(dm.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    ckpt = build_dir / ("mmdit-quick.ckpt" if quick else "mmdit.ckpt")
    start = 0
    vae_sha1 = hashlib.sha1(Path(vae_path).read_bytes()).hexdigest()
    if ckpt.is_file() and not quick:
        state = torch.load(ckpt, weights_only=True)
        if state.get("vae_sha1") != vae_sha1:
            log(f"mmdit: {ckpt} was trained on other latents (another VAE file): starting over")
        else:
            dm.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            start = state["step"]
            log(f"mmdit: resumed from {ckpt} at step {start}")
    warm = 200
    t0 = time.time()
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # per step: a resumed run draws the same
        pick = torch.randint(len(latents), (BATCH,), generator=g)
        x0, cls = latents[pick], pick.clone()
        cls[torch.rand(BATCH, generator=g) < 0.1] = empty
        sigma = shift_sigma(torch.rand(BATCH, generator=g)).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=g)
        xt = (1 - sigma) * x0 + sigma * noise
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / warm)
        y = torch.nn.functional.pad(pooled_l[cls], (0, 2048 - CLIP_WIDTH))
        v = dm(xt, sigma.flatten() * 1000, context=ctx_l[cls].float(), y=y)
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(EMA, (step + 1) / (step + 10))
            for pe, p in zip(ema.parameters(), dm.parameters()):
                pe.lerp_(p, 1 - decay)
        done = step + 1
        if done % CHECKPOINT_EVERY == 0 or done == steps:
            state = dict(model=dm.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=done, vae_sha1=vae_sha1)
            write_atomic(ckpt, lambda tmp: torch.save(state, tmp))
        if step % 50 == 0 or done == steps:
            log(f"mmdit step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    ema.context_embedder = ema.context_embedder.linear  # back to the host's module layout (its own EMA copy)
    ema.eval()
    sd = {k: v.detach().half() for k, v in ema.state_dict().items()}
    captions = [data.captions[i] for i in train]
    meta = {
        "glance_kit.training_captions": str(len(captions)),
        "glance_kit.training_captions_sha1": hashlib.sha1("\n".join(captions).encode()).hexdigest(),
        "glance_kit.steps": str(steps), "glance_kit.batch": str(BATCH), "glance_kit.learning_rate": str(LR),
        "glance_kit.ema": str(EMA), "glance_kit.data": f"{emoji_data.PACKAGE}@{emoji_data.VERSION} (Noto emoji, Apache-2.0)",
    }
    return sd, meta
