"""The memory the paper's Qwen-Image and FLUX.1-dev LoRA recipes need at 1024x1024, two ways that must agree.

    python benchmarks/train_memory.py              # the README table; exits non-zero if the two ways disagree
    python benchmarks/train_memory.py --calibrate  # re-measure the recipes' activation coefficients (small models)

"From the recipe": the paper's widths by hand. LoRA parameters are rank x (in + out) summed over the recipe's target
layers (Qwen-Image: 12 layers in each of 60 blocks, width 3072, MLP 12288, modulation 6 x 3072; FLUX.1-dev: the image
stream's qkv (3072 -> 9216) and output projection in 19 double blocks, linear1 (3072 -> 21504) in 38 single blocks);
fp32 parameters and gradients at 4 bytes each; AdamW 8 bytes, AdamW8bit 2 bytes (+ block statistics); activations
as training/memory.py describes them, in bf16 (CUDA with bf16 autocast), with the recipe's measured coefficients.
"The trainer's estimate": training/session.plan_memory, what the trainer asks the host for, run on the host's own
full-size model built on the meta device (every layer and shape, no weights). Weights are the host's size of that
model stored in bf16 or fp8. The caption is taken as 256 tokens (FLUX's T5 pads to at least 256).

``--calibrate`` measures the saved activation elements per block of the small test models (benchmarks/models.py, and
benchmarks/families.py for every family without a paper recipe) in the trainer's own forward pass, at several image
sizes, with the trainer's own token count (the model's patch size, the caption as the model sees it), and fits elements = a * tokens * width + b * tokens^2 + c:
``a`` is the coefficient (the tokens^2 term is the CPU attention's softmax, which CUDA's fused attention does not keep).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402
from benchmarks import families as F  # noqa: E402
from benchmarks import models as gm  # noqa: E402

RESOLUTION = 1024
CAPTION_TOKENS = 256
GIB = 1024 ** 3
BF16 = 2


def _qwen_by_hand() -> dict:
    d, mlp, blocks = 3072, 4 * 3072, 60
    shapes = [(d, d)] * 8 + [(mlp, d)] * 2 + [(d, 6 * d)] * 2  # attention x 8, *_mlp.net.2 x 2, *_mod.1 x 2
    return dict(rank=32, shapes=shapes * blocks, width=d, blocks={"transformer_blocks": blocks}, always_checkpoint=False)


def _flux_by_hand() -> dict:
    d = 3072
    shapes = [(d, 3 * d), (d, d)] * 19 + [(d, 3 * d + 4 * d)] * 38  # img_attn.qkv, img_attn.proj; linear1
    return dict(rank=16, shapes=shapes, width=d, blocks={"double_blocks": 19, "single_blocks": 38}, always_checkpoint=True)


BY_HAND = {"qwen": _qwen_by_hand, "flux": _flux_by_hand}
NAMES = {"qwen": "Qwen-Image", "flux": "FLUX.1-dev"}


def from_recipe(kind: str, recipe, checkpointing: bool) -> dict:
    """Bytes per part, by hand from the paper's widths and the recipe's activation coefficients."""
    spec = BY_HAND[kind]()
    params = sum(spec["rank"] * (i + o) for i, o in spec["shapes"])
    tokens = (RESOLUTION // 16) ** 2 + CAPTION_TOKENS  # 8x VAE, 2x2 patches
    per_token = dict(recipe.activation_per_token)
    c = [per_token[name] for name, n in spec["blocks"].items() for _ in range(n)]
    n_blocks, busiest = len(c), max(c)
    kept = (n_blocks + 1 + busiest) if checkpointing else sum(c)
    acts = (kept + busiest + 2) * tokens * spec["width"] * BF16  # + one block of gradients, + 2 outside the blocks
    return {"lora_params": params, "lora": 4 * params, "gradients": 4 * params, "AdamW": 8 * params,
            "AdamW8bit": params * (2 + 8 / 256), "activations": acts}


def trainer_estimate(patcher, kind: str, optimizer: str, checkpointing: bool):
    """training/session.plan_memory on the host's full-size model (meta device), CUDA bf16 autocast precision."""
    session, settings_mod, recipes, adapters, precision = (pack_module(f"training.{m}") for m in (
        "session", "settings", "recipes", "adapters", "precision"))
    recipe = recipes.detect_recipe(patcher)
    targets = adapters.target_layers(patcher.model.diffusion_model, recipe.target_modules)
    settings = settings_mod.TrainSettings(
        sigmas=(1.0,), target_modules=recipe.target_modules, rank=recipe.rank, alpha=recipe.alpha,
        learning_rate=recipe.learning_rate, steps=recipe.steps, seed=0, gradient_checkpointing=checkpointing,
        block_lists=recipe.block_lists, activation_per_token=dict(recipe.activation_per_token),
        width_module=recipe.context_module)
    latent_shape = (1, 16, 1, RESOLUTION // 8, RESOLUTION // 8) if kind == "qwen" else (1, 16, RESOLUTION // 8, RESOLUTION // 8)
    cuda_bf16 = precision.Precision(torch.bfloat16, False, torch.bfloat16)
    return session.plan_memory(patcher, targets, settings, latent_shape, CAPTION_TOKENS, cuda_bf16, optimizer), recipe


def table() -> tuple[list[str], list[str]]:
    """(markdown lines of the README table, disagreements between the two ways)."""
    cols, problems = {}, []
    for kind in ("qwen", "flux"):
        models = {s: gm.make_full_size_on_meta(kind, s, torch.bfloat16) for s in (torch.bfloat16, torch.float8_e4m3fn)}
        est = {(s, o, c): trainer_estimate(models[s], kind, o, c)[0] for s in models
               for o in ("AdamW", "AdamW8bit") for c in (True, False)}
        recipe = trainer_estimate(models[torch.bfloat16], kind, "AdamW", True)[1]
        del models
        for (s, o, c), e in est.items():
            hand = from_recipe(kind, recipe, c)
            for part, ours, theirs in (("LoRA parameters", e.lora_params, hand["lora_params"]),
                                       ("LoRA bytes", e.lora + e.gradients, hand["lora"] + hand["gradients"]),
                                       ("optimiser", e.optimizer, hand[o]), ("activations", e.activations, hand["activations"])):
                if abs(ours - theirs) > max(1, 1e-6 * theirs):
                    problems.append(f"{NAMES[kind]} {s} {o} checkpointing={c} {part}: trainer {ours} vs recipe {theirs}")
        always = BY_HAND[kind]()["always_checkpoint"]
        bf, f8 = est[(torch.bfloat16, "AdamW", True)], est[(torch.float8_e4m3fn, "AdamW8bit", True)]
        off = est[(torch.bfloat16, "AdamW", False)]
        cols[kind] = [
            f"{bf.lora_params / 1e6:.1f}M (rank {recipe.rank})",
            f"{bf.weights / GIB:.2f} / {f8.weights / GIB:.2f}",
            f"{(bf.lora + bf.gradients) / GIB:.2f}",
            f"{bf.optimizer / GIB:.2f} / {f8.optimizer / GIB:.2f}",
            f"{bf.activations / GIB:.2f} / " + ("(always on)" if always else f"{off.activations / GIB:.2f}"),
            f"**{f8.total / GIB:.1f}**",
            f"{bf.total / GIB:.1f}",
        ]
    labels = ["LoRA parameters", "weights, bf16 / fp8", "LoRA parameters + gradients (fp32)",
              "optimiser state, AdamW / AdamW8bit", "activations, gradient checkpointing on / off",
              "**total: fp8 weights, AdamW8bit, checkpointing**", "total: bf16 weights, AdamW, checkpointing"]
    lines = [f"| GiB at {RESOLUTION}x{RESOLUTION}, caption {CAPTION_TOKENS} tokens | Qwen-Image | FLUX.1-dev |", "|---|---|---|"]
    lines += [f"| {label} | {q} | {f} |" for label, q, f in zip(labels, cols["qwen"], cols["flux"])]
    return lines, problems


# The families of benchmarks/families.py without a paper recipe whose coefficients --calibrate measures (Wan 2.2 A14B
# is Wan 2.1's model class and recipe; Qwen-Image, FLUX.1 and SD3 are measured on benchmarks/models.py's models).
FAMILY_KINDS = ("Flux.2", "Chroma", "AuraFlow", "Lumina2", "Z-Image", "HiDream", "HunyuanImage 2.1", "Wan 2.1",
                "Wan 2.2 5B", "HunyuanVideo", "LTXV", "Cosmos Predict2")


def _small_run(kind: str, size: int):
    """(model, latent, caption) of the small ``kind`` model for a ``size``-pixel image (8 image pixels per latent
    pixel for the families, whatever their own VAE: only the latent's size matters here)."""
    if kind in FAMILY_KINDS:
        model = F.build(kind)
        channels, dims = F.latent_layout(model)
        side = size // 8
        shape = (1, channels, 1, side, side) if dims == 3 else (1, channels, side, side)
        return model, torch.randn(shape, generator=torch.Generator().manual_seed(0)), F.conditioning(kind, 1)
    data = pack_module("training.data")
    model = {"flux": gm.make_flux, "qwen": gm.make_qwen, "sd3": gm.make_sd3}[kind]()
    latent = data.encode_latent(gm.make_tiny_vae(), data.prepare_image(gm.sample_image(size), size, 32), model)
    return model, latent, gm.conditioning(kind, 1)


def saved_per_block(kind: str, size: int, checkpointing: bool = False):
    """One training step of the small ``kind`` model (the trainer's own forward and backward) at ``size`` px: the
    saved activation elements of each block (what autograd keeps for the backward pass: not a weight, not a LoRA
    matrix), those outside the blocks, and the run (blocks, tokens, width, the trainer's estimate)."""
    import comfy.patcher_extension as pe

    blocks_mod, settings_mod, trainer, recipes, adapters, session = (pack_module(f"training.{m}") for m in (
        "blocks", "settings", "trainer", "recipes", "adapters", "session"))
    model, latent, positive = _small_run(kind, size)
    model = model.clone()
    recipe = recipes.detect_recipe(model)
    dm = model.model.diffusion_model
    blocks = [(name, block) for name, mods in blocks_mod.block_lists(dm, recipe.block_lists) for block in mods]
    own = {t.untyped_storage().data_ptr() for t in list(model.model.parameters()) + list(model.model.buffers())}
    counts, current, outside = {}, [], {}

    def pack(t):
        if not (t.is_leaf and t.requires_grad):  # not a weight, not a LoRA matrix
            key = t.untyped_storage().data_ptr()
            elements = t.untyped_storage().nbytes() // t.element_size()
            if current and key not in own:  # each storage counted once, in the first block that saves it
                own.add(key)
                counts[current[-1]] = counts.get(current[-1], 0) + elements
            elif not current:
                outside[key] = elements
        return t

    def measure(executor, *args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return executor(*args, **kwargs)

    def leave(module, args, output):
        current.pop()  # returns None: the block's output is left as it is

    handles = []
    for i, (_, block) in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: current.append(i)))
        handles.append(block.register_forward_hook(leave))
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-measure", measure)
    if recipe.guidance is not None:
        positive = [[c, {**e, "guidance": recipe.guidance}] for c, e in positive]
    settings = settings_mod.TrainSettings(sigmas=(0.9,), target_modules=recipe.target_modules, rank=8, alpha=8.0,
                                          learning_rate=1e-4, steps=1, seed=0, gradient_checkpointing=checkpointing,
                                          block_lists=recipe.block_lists,
                                          activation_per_token=dict(recipe.activation_per_token),
                                          width_module=recipe.context_module)
    try:
        with torch.inference_mode():
            result = trainer.train_lora(model, latent, positive, settings, recipe.arch)
    finally:
        for h in handles:
            h.remove()
    counts[None] = sum(n for key, n in outside.items() if key not in own)  # outside the blocks, not kept by one
    # The trainer's own count of tokens (the latent's patches under the model's patch size, plus the caption's)
    width = session.hidden_width(dm, recipe.context_module, adapters.target_layers(dm, recipe.target_modules))
    return dict(blocks=blocks, counts=counts, tokens=result.memory.tokens, width=width, estimate=result.memory,
                recipe=recipe)


def measure_per_token(kind: str, sizes=(64, 96, 128, 192)) -> dict[str, float]:
    """The fitted coefficient ``a`` per block list of the small ``kind`` model (see the module docstring)."""
    import numpy as np

    rows = []
    for size in sizes:
        run = saved_per_block(kind, size)
        per_list = {}
        for i, (name, _) in enumerate(run["blocks"]):
            per_list[name] = max(per_list.get(name, 0), run["counts"].get(i, 0))
        rows.append((run["tokens"], run["width"], per_list))
    fitted = {}
    for name in rows[0][2]:
        x = np.array([[n * w, n * n, w] for n, w, _ in rows], dtype=float)
        y = np.array([p[name] for _, _, p in rows], dtype=float)
        fitted[name] = float(np.linalg.lstsq(x, y, rcond=None)[0][0])
    return fitted


def calibrate() -> None:
    recipes, optim = pack_module("training.recipes"), pack_module("training.optim")
    kinds = [("flux", recipes.FLUX), ("qwen", recipes.QWEN), ("sd3", recipes.SD3)] + [(k, None) for k in FAMILY_KINDS]
    for kind, recipe in kinds:
        try:
            if recipe is None:
                recipe = recipes.detect_recipe(F.build(kind))
            measured = measure_per_token(kind)
        except (F.Unsupported, optim.NotTrainableError) as e:
            print(f"{kind:<17} not measured on this host: {str(e)[:160]}")
            continue
        kept = dict(recipe.activation_per_token)
        for name, a in measured.items():
            print(f"{kind:<17} {name:<22} measured {a:6.2f}   recipe {kept.get(name, float('nan')):6.1f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    start_in_process()
    torch.set_num_threads(1)
    if args.calibrate:
        calibrate()
        return
    lines, problems = table()
    print("\n".join(lines))
    print(f"\ncommand: python benchmarks/train_memory.py ({pack_module('host_compat').host_version()})")
    if problems:
        print("\nDISAGREE:\n" + "\n".join(problems))
        sys.exit(1)
    print("from the recipe == the trainer's estimate: yes")


if __name__ == "__main__":
    main()
