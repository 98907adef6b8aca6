"""The demo model kit: a small real model set that ComfyUI's stock loaders load, and that draws emoji.

    python -m cli.model_kit MODELS_DIR      (from the repository root)

``ensure_demo_models(models_dir)`` writes, when absent:

- ``diffusion_models/glance_demo_mmdit.safetensors``: an SD3-family MMDiT (hidden 128, depth 2, patch 2,
  16 latent channels, 1.9M parameters), for UNETLoader (weight_dtype "default"). Stock SD3 sampling: shift 3.0.
- ``text_encoders/glance_demo_clip_l.safetensors``: a randomly initialised CLIP-L (ComfyUI's own config and
  tokenizer), for CLIPLoader with type "sd3" (context [1, 77, 4096], pooled [1, 2048]). Its weights come from
  a counter-based hash, so every machine and torch version builds the same file.
- ``vae/glance_demo_vae.safetensors``: the host's TAESD architecture with 16 latent channels (SD3 layout),
  for VAELoader.

Prompts are emoji captions (``cli/emoji_data.py``: "red apple, food and drink"); images are 64x64 px
(EmptySD3LatentImage 64x64, latents 8x8). The MMDiT and the VAE were trained by
``python -m benchmarks.repro.train_models`` on the training captions; their weight files are committed in
``cli/kit/`` and copied from there (never trained on the fly). CPU only, no network.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from schedules.atomic_file import write_atomic  # noqa: E402

KIT = Path(__file__).resolve().parent / "kit"

MMDIT_NAME = "glance_demo_mmdit.safetensors"
CLIP_NAME = "glance_demo_clip_l.safetensors"
VAE_NAME = "glance_demo_vae.safetensors"
CLIP_TYPE = "sd3"
IMAGE_SIZE = 64
SHIFT = 3.0  # the stock SD3 model sampling's shift (comfy.supported_models.SD3), which the kit's MMDiT gets
BUILD_COMMAND = "python -m benchmarks.repro.train_models"

CLIP_SEED = 20251202
_CLIP_LAYERS, _CLIP_WIDTH, _CLIP_MLP, _CLIP_VOCAB, _CLIP_POSITIONS = 12, 768, 3072, 49408, 77


def ensure_demo_models(models_dir: Path) -> dict[str, Path]:
    """Make sure the demo models exist under ``models_dir`` (a ComfyUI models folder); returns their paths.

    Keys: ``diffusion_model``, ``text_encoder``, ``vae``. The MMDiT and VAE are copies of ``cli/kit/`` (committed):
    a file already there is kept when it is the same, replaced when it is an older kit's (the base model was trained
    on its VAE's latents, so the two must match). The CLIP-L is computed once and never overwritten.
    """
    models_dir = Path(models_dir)
    paths = {
        "diffusion_model": models_dir / "diffusion_models" / MMDIT_NAME,
        "text_encoder": models_dir / "text_encoders" / CLIP_NAME,
        "vae": models_dir / "vae" / VAE_NAME,
    }
    for key, name in (("diffusion_model", MMDIT_NAME), ("vae", VAE_NAME)):
        source = KIT / name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: restore it from the repository (git checkout -- cli/kit) "
                                    f"or rebuild the kit with `{BUILD_COMMAND}` (about an hour on a CPU)")
        if not _same_file(paths[key], source):  # absent, or a copy of an older kit: the kit's files go together
            write_atomic(paths[key], lambda tmp, src=source: shutil.copyfile(src, tmp))
    if not paths["text_encoder"].is_file():
        save_safetensors(clip_l_state_dict(), paths["text_encoder"])
    return paths


def _same_file(path: Path, source: Path) -> bool:
    if not path.is_file() or path.stat().st_size != source.stat().st_size:
        return False
    return hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def node_inputs() -> dict[str, dict]:
    """The stock loader nodes' inputs for the kit, keyed by node type."""
    return {
        "UNETLoader": {"unet_name": MMDIT_NAME, "weight_dtype": "default"},
        "CLIPLoader": {"clip_name": CLIP_NAME, "type": CLIP_TYPE},
        "VAELoader": {"vae_name": VAE_NAME},
        "EmptySD3LatentImage": {"width": IMAGE_SIZE, "height": IMAGE_SIZE},
    }


def kit_overrides(api: dict) -> dict:
    """Title overrides (for ``cli.client.apply_overrides``) that point a shipped API workflow's loaders at the kit,
    and its latent size and training resolution at the kit's image size."""
    names = node_inputs()
    out = {}
    for node in api.values():
        title, cls = node["_meta"]["title"], node["class_type"]
        if cls in ("UNETLoader", "CLIPLoader", "VAELoader"):
            out.update({f"{title}.{k}": v for k, v in names[cls].items() if k in node["inputs"]})
        elif cls == "EmptySD3LatentImage":
            out.update({f"{title}.width": IMAGE_SIZE, f"{title}.height": IMAGE_SIZE})
        elif cls == "GlanceTrainLoRA":
            out[f"{title}.resolution"] = max(64, IMAGE_SIZE)  # 64: the node's minimum
    return out


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


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A safetensors file written whole or not at all (readable by all: models are shared files)."""
    import safetensors.torch

    write_atomic(path, lambda tmp: safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()},
                                                               str(tmp), metadata=metadata))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the Glance demo models into a ComfyUI models folder.")
    ap.add_argument("models_dir", type=Path, help="a ComfyUI models folder (e.g. ComfyUI/models)")
    args = ap.parse_args(argv)
    for key, path in ensure_demo_models(args.models_dir).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
