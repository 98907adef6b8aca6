"""The trainer and the phase sampler on a CUDA device, as a user runs them: a full-width FLUX-architecture model file.

A FLUX.1-dev-architecture diffusion model at full width (hidden 3072, 24 heads, T5 width 4096, CLIP width 768) with
2 double + 2 single blocks, about 1.0B parameters, random weights, is written as a bf16 file and loaded with the stock
UNETLoader twice: as stored (bf16) and with weight_dtype fp8_e4m3fn. For each, GlanceTrainLoRA's job trains a
Slow-LoRA (the paper's FLUX recipe: rank 16, its 5 slow timesteps) at 1024x1024, then a Fast-LoRA with fewer steps;
GlanceLoraLoader applies both to the model and a 10-step phase run (the flux_dev_glance preset, 5 slow + 5 fast,
cfg 1, guidance 3.5) samples with both experts.

Printed per storage: seconds per training step (median of the step intervals after the first), peak VRAM while
training (torch's peak allocated) and the trainer's own estimate of it, the sampling run's seconds and peak VRAM,
and the expert switch in ms (the phase guider's own measurement). On v0.33 the loader gives a dynamic-VRAM model,
so this also runs the trainer's non-dynamic delegate path.

    python benchmarks/gpu_check.py                 # CUDA
    python benchmarks/gpu_check.py --cpu-smoke     # the same code path on CPU with a tiny model, seconds

``--cpu-smoke`` uses the smallest FLUX file the host's stock loader reads (hidden 128 on hosts that read widths from
the file; one full-width double block on v0.3.64, whose detector fixes them), 64x64 pixels, 2 steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402
from benchmarks import models as gm  # noqa: E402

FULL = dict(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56], context_in_dim=4096, vec_in_dim=768, depth=2, single=2)
TINY = dict(hidden_size=128, num_heads=1, axes_dim=[16, 56, 56], context_in_dim=64, vec_in_dim=32, depth=1, single=1)
ONE_FULL_BLOCK = dict(FULL, depth=1, single=0)
FILE = "glance_gpu_check_flux.safetensors"
CAPTION_TOKENS = 256


def stock_loader_reads(widths: dict) -> bool:
    """Whether this host's detector takes the FLUX widths from the file (v0.33) rather than fixing them (v0.3.64)."""
    import comfy.model_detection

    d, ctx = widths["hidden_size"], widths["context_in_dim"]
    layout = {"img_in.weight": torch.empty((d, 64), device="meta"), "txt_in.weight": torch.empty((d, ctx), device="meta"),
              "double_blocks.0.img_attn.norm.key_norm.scale": torch.empty((128,), device="meta")}
    config = comfy.model_detection.detect_unet_config(layout, "")
    return config.get("hidden_size") == d and config.get("context_in_dim") == ctx


def write_model(path: Path, widths: dict) -> int:
    """Random full-architecture FLUX weights (bf16) in the file layout the stock UNETLoader reads; parameter count."""
    w = dict(widths)
    depth, single = w.pop("depth"), w.pop("single")
    patcher = gm.make_flux(seed=0, std=0.02, depth=depth, single=single, dtype=torch.bfloat16, **w)
    sd = {k: v.contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path))
    return sum(v.numel() for v in sd.values())


def caption(widths: dict, tokens: int):
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn((1, tokens, widths["context_in_dim"]), generator=gen)
    return [[cond, {"pooled_output": torch.randn((1, widths["vec_in_dim"]), generator=gen), "guidance": 3.5}]]


class Peak:
    """Peak allocated bytes on the device within the block (None on CPU)."""

    def __init__(self, device):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()


def gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def check(nodes, storage: str, widths: dict, resolution: int, steps: int, device) -> dict:
    import comfy.model_management as mm
    import folder_paths

    job = pack_module("training.job")
    schedules = pack_module("schedules.presets")
    sampling = pack_module("sampling.phase_guider")
    loras = Path(folder_paths.get_folder_paths("loras")[0])
    with torch.inference_mode():  # as the executor runs the loader
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(FILE, storage)[0]
    vae = gm.make_tiny_vae()
    image = gm.sample_image(resolution)
    tokens = CAPTION_TOKENS if device.type == "cuda" else 8
    positive = caption(widths, tokens)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    times = []

    def on_step(step, loss, sigma, total):
        times.append(time.perf_counter())

    out = {"storage": storage}
    trained = {}
    for phase, n in (("slow", steps), ("fast", max(2, steps // 2))):
        times.clear()
        inputs = job.TrainInputs(phase=phase, rank=16, steps=n, seed=0, caption_dropout=0.0, resolution=resolution,
                                 save_name=f"gpu_check/{stamp}_{storage}_{phase}")
        with Peak(device) as peak, torch.inference_mode():
            outcome = job.train_job(model, vae, image, positive, inputs, loras, on_step)
        trained[phase] = outcome.file_name
        if phase == "slow":
            gaps = [b - a for a, b in zip(times, times[1:])]
            out["s_per_step"] = statistics.median(gaps) if gaps else float("nan")
            out["train_peak"] = peak.bytes
            out["estimate"] = outcome.result.memory.total
            out["precision"] = outcome.result.precision
            out["final_loss"] = outcome.result.losses[-1]
    with torch.inference_mode():
        slow, fast = nodes.NODE_CLASS_MAPPINGS["GlanceLoraLoader"].execute(model, trained["slow"], 1.0, trained["fast"], 1.0).args
    sigmas, switch = schedules.preset_sigmas("flux_dev_glance")
    latent = torch.zeros((1, 16, resolution // 8, resolution // 8))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    import comfy.samplers

    guider = sampling.PhaseGuider(slow, fast, switch, 1.0, 1.0)
    guider.set_conds(positive, positive)
    with Peak(device) as peak, torch.inference_mode():
        start = time.perf_counter()
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)
        out["sample_s"] = time.perf_counter() - start
    out["sample_peak"] = peak.bytes
    out["switch_ms"] = guider.last_run.switch_seconds * 1000
    out["finite"] = bool(torch.isfinite(samples).all())
    del model, slow, fast, guider
    mm.unload_all_models()
    mm.soft_empty_cache()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: runs the code path, measures nothing")
    parser.add_argument("--steps", type=int, default=20, help="Slow-LoRA steps (the Fast-LoRA gets half)")
    parser.add_argument("--resolution", type=int, default=1024)
    args = parser.parse_args()
    if args.cpu_smoke:
        args.steps, args.resolution = 2, 64
        torch.set_num_threads(1)  # tiny tensors: more threads only contend
    nodes = start_in_process(cpu=args.cpu_smoke)
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths

    comfy.utils.set_progress_bar_enabled(False)
    device = mm.get_torch_device()
    if not args.cpu_smoke and device.type != "cuda":
        sys.exit(f"gpu_check needs a CUDA device (the host picked {device}); use --cpu-smoke to run the code path on CPU.")
    widths = FULL
    if args.cpu_smoke:
        widths = TINY if stock_loader_reads(TINY) else ONE_FULL_BLOCK
    path = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / FILE
    params = write_model(path, widths)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    rows = [check(nodes, storage, widths, args.resolution, args.steps, device) for storage in ("default", "fp8_e4m3fn")]
    print(f"\nComfyUI {pack_module('host_compat').host_version()}, {name}, torch {torch.__version__}. FLUX architecture, "
          f"hidden {widths['hidden_size']}, {widths['depth']}+{widths['single']} blocks, {params / 1e9:.2f}B parameters, "
          f"file bf16; {args.resolution}x{args.resolution}; Slow-LoRA {args.steps} steps, rank 16; sampling 5 + 5 steps.")
    print("| weights | precision | s/step | train peak GiB | trainer's estimate GiB | sample s (10 steps) | sample peak GiB | switch ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        storage = "bf16" if r["storage"] == "default" else "fp8_e4m3fn"
        print(f"| {storage} | {r['precision']} | {r['s_per_step']:.3f} | {gib(r['train_peak'])} | {gib(r['estimate'])} | "
              f"{r['sample_s']:.2f} | {gib(r['sample_peak'])} | {r['switch_ms']:.2f} |")
    bad = [r["storage"] for r in rows if not r["finite"] or not r["final_loss"] == r["final_loss"]]
    print("command: python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]))
    if bad:
        sys.exit(f"non-finite samples or loss for {bad}")


if __name__ == "__main__":
    main()
