"""The demo model kit: a tiny real model set that ComfyUI's stock loaders load, and that draws digits.

    python -m cli.model_kit MODELS_DIR [--quick]      (from the repository root)

``ensure_demo_models(models_dir)`` writes, when absent:

- ``diffusion_models/glance_demo_mmdit.safetensors``: an SD3-family MMDiT (hidden 128, depth 2, patch 2,
  16 latent channels, 1.9M parameters), for UNETLoader (weight_dtype "default"). Stock SD3 sampling: shift 3.0.
- ``text_encoders/glance_demo_clip_l.safetensors``: a randomly initialised CLIP-L (ComfyUI's own config and
  tokenizer), for CLIPLoader with type "sd3" (context [1, 77, 4096], pooled [1, 2048]). Its weights come from
  a counter-based hash, so every machine and torch version builds the same file.
- ``vae/glance_demo_vae.safetensors``: the host's TAESD architecture with 16 latent channels (SD3 layout),
  for VAELoader.

Prompts are ``"a handwritten digit N"`` (N = 0..9); images are 64x64 px (EmptySD3LatentImage 64x64, latents 8x8). The MMDiT
and VAE were trained by ``benchmarks/repro/train_models.py``; their small weight files are committed in
``benchmarks/repro/weights/`` and copied from there (trained here only when missing). CPU only, no network.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "benchmarks" / "repro" / "weights"

MMDIT_NAME = "glance_demo_mmdit.safetensors"
CLIP_NAME = "glance_demo_clip_l.safetensors"
VAE_NAME = "glance_demo_vae.safetensors"
CLIP_TYPE = "sd3"
PROMPT = "a handwritten digit {}"
IMAGE_SIZE = 64
SHIFT = 3.0

CLIP_SEED = 20251202
_CLIP_LAYERS, _CLIP_WIDTH, _CLIP_MLP, _CLIP_VOCAB, _CLIP_POSITIONS = 12, 768, 3072, 49408, 77


def ensure_demo_models(models_dir: Path, quick: bool = False) -> dict[str, Path]:
    """Make sure the demo models exist under ``models_dir`` (a ComfyUI models folder); returns their paths.

    Keys: ``diffusion_model``, ``text_encoder``, ``vae``. Existing files of the same name are kept (never
    overwritten). ``quick`` only matters when the committed weights are missing: it then trains briefly
    (lower quality, for tests) into ``models_dir/.glance_demo_build``, never into the repository.
    """
    models_dir = Path(models_dir)
    paths = {
        "diffusion_model": models_dir / "diffusion_models" / MMDIT_NAME,
        "text_encoder": models_dir / "text_encoders" / CLIP_NAME,
        "vae": models_dir / "vae" / VAE_NAME,
    }
    if not paths["text_encoder"].is_file():
        save_atomic(clip_l_state_dict(), paths["text_encoder"])
    pair = {"vae": VAE_NAME, "diffusion_model": MMDIT_NAME}
    if any(not paths[key].is_file() for key in pair):
        # The base model was trained on its VAE's latents: both files always come from the same folder.
        source = WEIGHTS
        if not all((WEIGHTS / name).is_file() for name in pair.values()):
            source = models_dir / ".glance_demo_build"
            if not all((source / name).is_file() for name in pair.values()):
                _train_weights(source, quick)
        for key, name in pair.items():
            if not paths[key].is_file():
                _replace_atomic(paths[key], lambda tmp, src=source / name: shutil.copyfile(src, tmp))
    return paths


def node_inputs() -> dict[str, dict]:
    """The stock loader nodes' inputs for the kit, keyed by node type."""
    return {
        "UNETLoader": {"unet_name": MMDIT_NAME, "weight_dtype": "default"},
        "CLIPLoader": {"clip_name": CLIP_NAME, "type": CLIP_TYPE},
        "VAELoader": {"vae_name": VAE_NAME},
        "EmptySD3LatentImage": {"width": IMAGE_SIZE, "height": IMAGE_SIZE},
    }


def clip_l_state_dict() -> dict[str, torch.Tensor]:
    """A CLIP-L text model (ComfyUI's key names and shapes), random but identical on every machine (fp16)."""
    shapes = {
        "text_model.embeddings.token_embedding.weight": (_CLIP_VOCAB, _CLIP_WIDTH),
        "text_model.embeddings.position_embedding.weight": (_CLIP_POSITIONS, _CLIP_WIDTH),
    }
    for i in range(_CLIP_LAYERS):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (_CLIP_WIDTH, _CLIP_WIDTH)
            shapes[f"{p}self_attn.{proj}.bias"] = (_CLIP_WIDTH,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (_CLIP_WIDTH,)
            shapes[f"{p}{norm}.bias"] = (_CLIP_WIDTH,)
        shapes[f"{p}mlp.fc1.weight"] = (_CLIP_MLP, _CLIP_WIDTH)
        shapes[f"{p}mlp.fc1.bias"] = (_CLIP_MLP,)
        shapes[f"{p}mlp.fc2.weight"] = (_CLIP_WIDTH, _CLIP_MLP)
        shapes[f"{p}mlp.fc2.bias"] = (_CLIP_WIDTH,)
    shapes["text_model.final_layer_norm.weight"] = (_CLIP_WIDTH,)
    shapes["text_model.final_layer_norm.bias"] = (_CLIP_WIDTH,)
    shapes["text_projection.weight"] = (_CLIP_WIDTH, _CLIP_WIDTH)

    out = {}
    for n, (key, shape) in enumerate(shapes.items()):
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("layer_norm.weight"):
            out[key] = torch.ones(shape, dtype=torch.float16)
        elif key.endswith(".bias"):
            out[key] = torch.zeros(shape, dtype=torch.float16)
        else:
            # Embeddings std 0.02 (as CLIP's init); linear layers std 1/sqrt(fan_in) so prompts mix across tokens.
            std = 0.02 if "embedding" in key else shape[-1] ** -0.5
            numel = shape[0] * (shape[1] if len(shape) > 1 else 1)
            uniform = _hash_uniform(numel, CLIP_SEED * 1000 + n)
            out[key] = ((uniform * 2 - 1) * (std * 3 ** 0.5)).reshape(shape).to(torch.float16)
    return out


_MASK64 = (1 << 64) - 1


def _i64(c: int) -> int:
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _shr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _hash_uniform(numel: int, seed: int, chunk: int = 1 << 22) -> torch.Tensor:
    """``numel`` floats in [0, 1) from SplitMix64 of (index, seed): integer arithmetic only, so reproducible."""
    out = torch.empty(numel, dtype=torch.float32)
    offset = _i64(seed * 0xD1B54A32D192ED03)
    for start in range(0, numel, chunk):
        z = torch.arange(start, min(numel, start + chunk), dtype=torch.int64) * _GOLDEN + offset
        z = (z ^ _shr(z, 30)) * _MIX1
        z = (z ^ _shr(z, 27)) * _MIX2
        z = z ^ _shr(z, 31)
        out[start:start + len(z)] = (_shr(z, 11).double() * 2.0 ** -53).float()
    return out


def _train_weights(out: Path, quick: bool) -> None:
    """Train both weight files into ``out`` (needs the ComfyUI host; minutes on a CPU, about 15 in full)."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from benchmarks.repro import train_models

    train_models.train_weights(out, quick=quick)


def save_atomic(tensors: dict, path: Path) -> None:
    """A safetensors file written whole or not at all."""
    import safetensors.torch

    def write(tmp: Path) -> None:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors creates files readable by their owner only; models are shared files

    _replace_atomic(path, write)


def _replace_atomic(path: Path, write) -> None:
    """``write(tmp)`` next to ``path``, then rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the Glance demo models into a ComfyUI models folder.")
    ap.add_argument("models_dir", type=Path, help="a ComfyUI models folder (e.g. ComfyUI/models)")
    ap.add_argument("--quick", action="store_true", help="if weights must be trained, train briefly")
    args = ap.parse_args(argv)
    for key, path in ensure_demo_models(args.models_dir, quick=args.quick).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
