"""Training speed and peak memory: GlanceTrainLoRA vs the host's built-in TrainLoraNode, one process, same model.

Both train rank-R LoRAs for N steps on the same small FLUX-architecture model (random weights) and the same latent,
AdamW, fp32 on CPU (bf16 autocast on CUDA for ours; the host's node is given training_dtype bf16 there too),
gradient checkpointing on (the host's FLUX training needs it). Timed: the whole call (setup + training). The host's node takes a latent; ours takes the image and encodes it
once, so "GlanceTrainLoRA training" (train_lora on the same latent) is the like-for-like row, and the node row
adds the VAE encode and the file save.
Memory on CPU: peak resident set (VmHWM, reset before each run after returning freed memory to the OS) minus the
resident set just before the run; on CUDA: torch's peak allocated bytes during the run.

    python benchmarks/bench_train.py [--steps 20] [--rank 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402
from benchmarks import models as gm  # noqa: E402

BENCH_FLUX = dict(hidden_size=128, num_heads=2, axes_dim=[16, 24, 24])
BENCH_DEPTH = (2, 4)  # double, single blocks


def run_host_trainer(nodes, **inputs):
    """The host's TrainLoraNode as the executor runs it: V1 (v0.3.64) or V3 with list inputs (v0.33, which also
    has more inputs: those not given take their defaults)."""
    cls = nodes.NODE_CLASS_MAPPINGS["TrainLoraNode"]
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            if name not in inputs and len(spec) > 1 and "default" in spec[1]:
                inputs[name] = spec[1]["default"]
    if not hasattr(cls, "define_schema"):
        return getattr(cls(), cls.FUNCTION)(**inputs)
    if getattr(cls, "INPUT_IS_LIST", False):
        inputs = {k: [v] for k, v in inputs.items()}
    return cls.execute(**inputs)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn, device):
    """(seconds, peak bytes above the starting point) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = _rss_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024
    return time.perf_counter() - t0, peak - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = Path("/tmp/glance_bench_train")
    nodes = start_in_process(base)
    import comfy.model_management as mm
    import folder_paths

    device = mm.get_torch_device()
    model = gm.make_flux(seed=0, std=0.05, depth=BENCH_DEPTH[0], single=BENCH_DEPTH[1], **BENCH_FLUX)
    vae = gm.make_tiny_vae()
    image = gm.sample_image(args.resolution)
    positive = gm.conditioning("flux", 1)
    with torch.inference_mode():
        latent = {"samples": vae.encode(image)}
    dtype = "bf16" if device.type == "cuda" else "fp32"
    ours_node = nodes.NODE_CLASS_MAPPINGS["GlanceTrainLoRA"]
    out_dir = Path(folder_paths.get_folder_paths("loras")[0]) / "bench"
    counter = iter(range(10**6))

    def ours(steps):
        with torch.inference_mode():
            ours_node.execute(model=model, vae=vae, image=image, positive=positive, phase="slow", timesteps="",
                              rank=args.rank, alpha=float(args.rank), learning_rate=5e-4, steps=steps, seed=0,
                              caption_dropout=0.0, gradient_checkpointing=True,
                              save_name=f"bench/run_{time.time_ns()}_{next(counter)}", resolution=args.resolution)

    loop = pack_module("training.loop")
    recipes = pack_module("training.recipes")
    data = pack_module("training.data")
    with torch.inference_mode(False):
        model_latent = data.encode_latent(vae, image, model)
    flux_positive = [[c, {**e, "guidance": 1.0}] for c, e in positive]

    def ours_loop(steps):
        recipe = recipes.FLUX
        settings = loop.TrainSettings(sigmas=tuple(t / 1000 for t in recipe.slow_t), target_modules=recipe.target_modules,
                                      rank=args.rank, alpha=float(args.rank), learning_rate=5e-4, steps=steps, seed=0,
                                      gradient_checkpointing=True, block_lists=recipe.block_lists)
        with torch.inference_mode():
            loop.train_lora(model, model_latent, flux_positive, settings, recipe.arch)

    def vae_encode(steps):
        with torch.inference_mode():
            vae.encode(image)

    def host(steps):
        with torch.inference_mode():
            run_host_trainer(nodes, model=model, latents=latent, positive=positive, batch_size=1, steps=steps,
                             grad_accumulation_steps=1, learning_rate=5e-4, rank=args.rank, optimizer="AdamW",
                             loss_function="MSE", seed=0, training_dtype=dtype, lora_dtype=dtype, algorithm="LoRA",
                             gradient_checkpointing=True, existing_lora="[None]")

    ours(2), host(2), ours_loop(2)  # warm-up: imports, first-call allocations
    runs = (("TrainLoraNode (host)", host), ("GlanceTrainLoRA training", ours_loop),
            ("GlanceTrainLoRA node", ours), ("  of which VAE encode", vae_encode))
    results = {name: [] for name, _ in runs}
    for _ in range(args.repeats):
        for name, fn in runs:
            results[name].append(measure(lambda: fn(args.steps), device))
    rows = {name: (args.steps / min(t for t, _ in r), max(m for _, m in r)) for name, r in results.items()}
    ours_speed, ours_mem = rows["GlanceTrainLoRA training"]
    host_speed, host_mem = rows["TrainLoraNode (host)"]
    print(f"\nComfyUI {pack_module('host_compat').host_version()}. "
          f"FLUX-architecture model hidden {BENCH_FLUX['hidden_size']}, {BENCH_DEPTH[0]}+{BENCH_DEPTH[1]} "
          f"blocks, {sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.2f}M params; latent "
          f"{tuple(latent['samples'].shape)}; rank {args.rank}; {args.steps} steps; device {device}; threads {args.threads}")
    print(f"{'trainer':<28}{'steps/s':>10}{'peak MiB':>12}")
    for name, (speed, mem) in rows.items():
        shown = f"{speed:>10.2f}" if "VAE" not in name else f"{'(once)':>10}"
        print(f"{name:<28}{shown}{mem / 2**20:>12.1f}")
    print(f"Glance training vs host's TrainLoraNode (same latent): {ours_speed / host_speed:.2f}x speed, "
          f"{ours_mem / max(host_mem, 1):.2f}x peak memory")
    print("command: python benchmarks/bench_train.py " + " ".join(sys.argv[1:]))
    for f in out_dir.glob("run_*.safetensors"):
        f.unlink()


if __name__ == "__main__":
    main()
