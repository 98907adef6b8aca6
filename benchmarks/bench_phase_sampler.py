"""Speed of GlancePhaseKSampler against the stock KSampler, in one process on the real host.

    python benchmarks/bench_phase_sampler.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_phase_sampler.py --quick    # smaller model, fewer repeats

Measures (medians of interleaved repeats, so both sides see the same machine load):
1. overhead: GlancePhaseKSampler with the same model in both phases vs one KSampler, same steps and cfg;
2. switch cost at the switch, in ms and in model steps, for rank-32 LoRAs on every linear layer of the blocks:
   merged experts (the Fast-LoRA's weights merged in place of the Slow-LoRA's) and forward experts (the
   default: nothing moves); and a whole 10-step run with forward experts against merged ones;
3. Glance 10 steps (5 slow with cfg, 5 fast with cfg 1) vs stock 50 steps with cfg: wall-clock ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    hidden, latent_px = (256, 16) if args.quick else (512, 32)

    import tempfile

    nodes = start_in_process(Path(tempfile.mkdtemp(prefix="glance-bench-")))
    import comfy.model_management as mm
    import comfy.sd
    from benchmarks import models as gm

    torch.manual_seed(0)
    model = gm.make_flux(seed=0, std=0.02, depth=4, single=4, hidden_size=hidden, num_heads=hidden // 64, axes_dim=[16, 24, 24])
    pos, neg = gm.conditioning("flux", 1), gm.conditioning("flux", 2)
    latent = gm.empty_latent(latent_px, latent_px)
    ksampler = nodes.NODE_CLASS_MAPPINGS["KSampler"]()
    glance = nodes.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"]
    sampling = pack_module("nodes.phase_sampling")
    host_version = pack_module("host_compat").host_version()
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())

    def stock(steps, cfg, m=model):
        return ksampler.sample(m, 1, steps, cfg, "euler", "simple", pos, neg, latent)[0]["samples"]

    def phase(steps, cfg_slow, cfg_fast, slow=model, fast=model, switch=0.8, sigmas=None):
        return glance.execute(model_slow=slow, model_fast=fast, positive=pos, negative=neg, latent_image=latent, seed=1,
                              steps=steps, switch_sigma=switch, cfg_slow=cfg_slow, cfg_fast=cfg_fast,
                              sampler_name="euler", scheduler="simple", sigmas=sigmas).args[0]["samples"]

    stock(2, 3.0), phase(2, 3.0, 3.0)  # warm-up
    rows = []

    # 1. overhead, same model, same steps and cfg. Wall clock, and the time spent outside the model's forward
    # (a model wrapper adds up the forwards), which machine load hardly disturbs.
    in_model = [0.0]

    def forward_timer(apply_model, a):
        start = time.perf_counter()
        out = apply_model(a["input"], a["timestep"], **a["c"])
        in_model[0] += time.perf_counter() - start
        return out

    timed_model = model.clone()
    timed_model.set_model_unet_function_wrapper(forward_timer)
    t_stock, t_phase, out_stock, out_phase = [], [], [], []
    for _ in range(repeats):
        in_model[0] = 0.0
        t_stock.append(timed(lambda: stock(10, 3.0, timed_model))[0])
        out_stock.append(t_stock[-1] - in_model[0])
        in_model[0] = 0.0
        t_phase.append(timed(lambda: phase(10, 3.0, 3.0, timed_model, timed_model))[0])
        out_phase.append(t_phase[-1] - in_model[0])
    step_ms = statistics.median(t_stock) / 10 * 1000
    rows.append(("overhead: GlancePhaseKSampler / KSampler (same model, 10 steps, cfg 3), wall clock",
                 f"{statistics.median(t_phase) / statistics.median(t_stock):.3f}x",
                 f"{statistics.median(t_phase):.3f} s vs {statistics.median(t_stock):.3f} s"))
    extra = statistics.median(out_phase) - statistics.median(out_stock)
    rows.append(("overhead outside the model's forward (sampler + setup), per run",
                 f"{extra * 1000:+.1f} ms", f"{extra / statistics.median(t_stock) * 100:+.2f}% of the stock run "
                 f"({statistics.median(out_phase) * 1000:.1f} ms vs {statistics.median(out_stock) * 1000:.1f} ms)"))

    # 2. switch cost with LoRAs on every linear layer of the transformer blocks: merged vs forward experts
    modules = [m for m in gm.linear_modules(model) if "blocks" in m]
    patches = pack_module("nodes.lora_patches").lora_patches
    slow_p = patches(model, gm.random_lora(model, modules, rank=32, seed=1, scale=0.01), "slow")
    fast_p = patches(model, gm.random_lora(model, modules, rank=32, seed=2, scale=0.01), "fast")
    merged = []
    for p in (slow_p, fast_p):
        merged.append(model.clone())
        merged[-1].add_patches(p, 1.0)
    forward, experts = pack_module("nodes.forward_experts").forward_expert_clones(model, {"slow": (slow_p, 1.0), "fast": (fast_p, 1.0)})
    pairs = {"merged": tuple(merged), "forward": (forward["slow"], forward["fast"])}
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 10).cpu()
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))
    switch_s, run_s = {k: [] for k in pairs}, {k: [] for k in pairs}
    for _ in range(repeats):
        for mode, (slow, fast) in pairs.items():
            guider = sampling.PhaseGuider(slow, fast, 0.8, 3.0, 3.0)
            guider.set_conds(pos, neg)
            t, _ = timed(lambda: guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=1))
            switch_s[mode].append(guider.last_run.switch_seconds)
            run_s[mode].append(t)
    one_step_cfg_ms = step_ms
    for mode in pairs:
        ms = statistics.median(switch_s[mode]) * 1000
        rows.append((f"switch cost, {mode} experts ({len(modules)} linear layers, rank 32)",
                     f"{ms:.2f} ms", f"{ms / one_step_cfg_ms:.3f} of one cfg step ({one_step_cfg_ms:.1f} ms)"))
    ratio = statistics.median(run_s["forward"]) / statistics.median(run_s["merged"])
    rows.append(("10-step run (5 + 5, cfg 3), forward experts / merged experts", f"{ratio:.3f}x",
                 f"{statistics.median(run_s['forward']):.3f} s vs {statistics.median(run_s['merged']):.3f} s; "
                 f"experts hold {experts.nbytes() / 2**20:.1f} MiB"))
    slow, fast = pairs["forward"]

    # 3. Glance 10 steps (5 slow cfg 3 + 5 fast cfg 1) vs stock 50 steps cfg 3
    mm.unload_all_models()
    t50, t10 = [], []
    glance_sigmas = torch.tensor([1.0, .986979, .973204, .958609, .943119, .926647, .825702, .677987, .4412, .06055, 0.0])
    for _ in range(max(2, repeats // 2)):
        t50.append(timed(lambda: stock(50, 3.0))[0])
        t10.append(timed(lambda: phase(10, 3.0, 1.0, slow, fast, switch=0.935, sigmas=glance_sigmas))[0])
    rows.append(("Glance 10 steps (5 slow cfg 3 + 5 fast cfg 1, two LoRAs) vs stock 50 steps cfg 3",
                 f"{statistics.median(t50) / statistics.median(t10):.2f}x faster",
                 f"{statistics.median(t10):.3f} s vs {statistics.median(t50):.3f} s"))

    print(f"\nModel: Flux-architecture transformer, hidden {hidden}, 4+4 blocks, {params / 1e6:.1f}M params, "
          f"latent {latent_px}x{latent_px}, CPU ({torch.get_num_threads()} threads), {repeats} interleaved repeats, medians; "
          f"load average {os.getloadavg()[0]:.1f} at the end.")
    print(f"Host: ComfyUI {host_version}. Command: python benchmarks/bench_phase_sampler.py{' --quick' if args.quick else ''}\n")
    print("| measurement | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
