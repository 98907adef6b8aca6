"""Training speed and peak memory: GlanceTrainLoRA vs the host's built-in Train LoRA node, one process, same model.

The model is an SD3-family MMDiT (random weights) written to a file and loaded with the stock UNETLoader, as a user's
model is: v0.33's Train LoRA re-loads its model from the loader (``clone(force_deepcopy=True)``), which only works
for a model a loader made. Both trainers train rank-R LoRAs for N steps on the same latent with AdamW, gradient
checkpointing on, in fp32 on CPU (bf16 on CUDA: our autocast, the host's ``training_dtype``/``lora_dtype``).
The host's node puts an adapter on every layer (it has no target choice); ours on the recipe's attention layers,
and, in one more row, on every Linear layer (closer to the host's amount of work; the host also adapts norms and
biases).
On v0.33 the host's node has more settings (``bypass_mode``: adapters in the forward pass; ``offloading``: layer-wise
checkpointing for offloaded weights); each combination runs and the best of them is the reference.

Timed: the whole call (setup + training). The host's node takes a latent; ours takes the image and encodes it once, so
"GlanceTrainLoRA training" (train_lora on the same latent) is the like-for-like row, and the node row adds the VAE
encode and the file save. Memory on CPU: peak resident set (VmHWM, reset before each run after returning freed
memory to the OS) minus the resident set just before the run; on CUDA: torch's peak allocated bytes during the run.

    python benchmarks/bench_train.py [--steps 20] [--rank 16] [--repeats 3] [--hidden 256] [--resolution 256]
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402
from benchmarks import models as gm  # noqa: E402

MODEL_FILE = "glance_bench_train_sd3.safetensors"


def host_trainer_settings(nodes) -> list[dict]:
    """The host node's speed/memory settings this host has: v0.33 bypass_mode x offloading, v0.3.64 none."""
    cls = nodes.NODE_CLASS_MAPPINGS["TrainLoraNode"]
    names = {name for section in ("required", "optional") for name in cls.INPUT_TYPES().get(section, {})}
    axes = [name for name in ("bypass_mode", "offloading") if name in names]
    return [dict(zip(axes, values)) for values in itertools.product((False, True), repeat=len(axes))]


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256, help="MMDiT width (depth = width / 64)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = Path("/tmp/glance_bench_train")
    nodes = start_in_process(base)
    import comfy.model_management as mm
    import folder_paths

    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # the host trainer's console bar
    device = mm.get_torch_device()
    path = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(gm.sd3_state_dict(seed=0, hidden=args.hidden), str(path))
    with torch.inference_mode():
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(MODEL_FILE, "default")[0]
    vae = gm.make_tiny_vae()
    image = gm.sample_image(args.resolution)
    positive = gm.conditioning("sd3", 1)
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

    settings_mod, trainer, recipes, data = (pack_module(f"training.{m}") for m in ("settings", "trainer", "recipes", "data"))
    recipe = recipes.detect_recipe(model)
    with torch.inference_mode():
        model_latent = data.encode_latent(vae, image, model)
    ms = model.get_model_object("model_sampling")
    sigmas = recipes.timesteps_to_sigmas(recipes.phase_timesteps(recipe, ms, "slow"), ms)

    every_linear = tuple(n for n, m in model.model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear))

    def ours_loop(steps, targets=recipe.target_modules):
        settings = settings_mod.TrainSettings(sigmas=sigmas, target_modules=targets, rank=args.rank,
                                              alpha=float(args.rank), learning_rate=5e-4, steps=steps, seed=0,
                                              gradient_checkpointing=True, block_lists=recipe.block_lists,
                                              activation_per_token=dict(recipe.activation_per_token),
                                              width_module=recipe.context_module)
        with torch.inference_mode():
            trainer.train_lora(model, model_latent, positive, settings, recipe.arch)

    def vae_encode(steps):
        with torch.inference_mode():
            vae.encode(image)

    def host(setting):
        def run(steps):
            with torch.inference_mode():
                run_host_trainer(nodes, model=model, latents=latent, positive=positive, batch_size=1, steps=steps,
                                 grad_accumulation_steps=1, learning_rate=5e-4, rank=args.rank, optimizer="AdamW",
                                 loss_function="MSE", seed=0, training_dtype=dtype, lora_dtype=dtype, algorithm="LoRA",
                                 gradient_checkpointing=True, existing_lora="[None]", **setting)
        return run

    host_runs = [("TrainLoraNode (host)" + (" " + ", ".join(f"{k}={v}" for k, v in s.items()) if s else ""), host(s))
                 for s in host_trainer_settings(nodes)]
    for _, fn in host_runs:
        fn(2)
    ours(2), ours_loop(2)  # warm-up: imports, first-call allocations
    runs = host_runs + [("GlanceTrainLoRA training", ours_loop),
                        ("GlanceTrainLoRA training, every Linear layer", lambda n: ours_loop(n, every_linear)),
                        ("GlanceTrainLoRA node", ours),
                        ("  of which VAE encode", vae_encode)]
    results = {name: [] for name, _ in runs}
    for _ in range(args.repeats):  # interleaved, so that the machine's load hits every row alike
        for name, fn in runs:
            results[name].append(measure(lambda: fn(args.steps), device))
    rows = {name: (args.steps / min(t for t, _ in r), max(m for _, m in r)) for name, r in results.items()}
    ours_speed, ours_mem = rows["GlanceTrainLoRA training"]
    host_rows = {name: rows[name] for name, _ in host_runs}
    fastest = max(host_rows, key=lambda n: host_rows[n][0])
    leanest = min(host_rows, key=lambda n: host_rows[n][1])
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    print(f"\nComfyUI {pack_module('host_compat').host_version()}. SD3-family MMDiT hidden {args.hidden}, "
          f"{args.hidden // 64} blocks, {params / 1e6:.2f}M params, loaded by UNETLoader; latent "
          f"{tuple(latent['samples'].shape)}; rank {args.rank}; {args.steps} steps; device {device}; "
          f"threads {args.threads}; best of {args.repeats}")
    print(f"| {'trainer':<52} | {'steps/s':>8} | {'peak MiB':>9} |\n|---|---|---|")
    for name, (speed, mem) in rows.items():
        shown = f"{speed:>8.2f}" if "VAE" not in name else f"{'(once)':>8}"
        print(f"| {name:<52} | {shown} | {mem / 2**20:>9.1f} |")
    print(f"GlanceTrainLoRA training vs the host's fastest setting ({fastest}): {ours_speed / host_rows[fastest][0]:.2f}x "
          f"speed; vs its leanest ({leanest}): {ours_mem / max(host_rows[leanest][1], 1):.2f}x peak memory")
    print("command: python benchmarks/bench_train.py " + " ".join(sys.argv[1:]))
    for f in out_dir.glob("run_*.safetensors"):
        f.unlink()


if __name__ == "__main__":
    main()
