"""Speed of GlancePhaseKSampler against the stock KSampler, in one process on the real host.

    python benchmarks/bench_phase_sampler.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_phase_sampler.py --quick    # smaller model, fewer repeats

Measures (medians of interleaved repeats, so both sides see the same machine load):
1. overhead: GlancePhaseKSampler with the same model in both phases vs one KSampler, same steps and cfg;
2. the two experts of GlanceLoraLoader on a FLUX.1-width transformer (hidden 3072, one double and one single
   block, 531M parameters) stored in bf16, rank-32 LoRAs (bf16) on the FLUX recipe's modules: forward experts
   (the default) against merged ones: switch time, bytes of base weights written per run, time per step, and
   the memory each adds (peak RSS of a fresh process each, beyond a plain run; and what stays allocated);
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

EXPERT_STEPS = 4  # 2 slow + 2 fast, cfg 1: a step is one model pass


def _expert_model(quick: bool):
    """FLUX.1-dev's transformer widths (hidden 3072, 24 heads), one double and one single block, stored in bf16;
    the text and pooled inputs stay small (they are not where LoRAs go). --quick: hidden 1024."""
    from benchmarks import models as gm

    hidden = 1024 if quick else 3072
    return gm.make_flux(seed=0, std=0.02, depth=1, single=1, dtype=torch.bfloat16, hidden_size=hidden,
                        num_heads=hidden // 128, axes_dim=[16, 56, 56])


def _expert_patches(model):
    """Rank-32 bf16 Slow and Fast LoRAs on the FLUX recipe's target modules, as the host's loader makes them."""
    from benchmarks import models as gm

    recipe = pack_module("training.recipes").FLUX
    modules = [m for m in gm.linear_modules(model) if any(m.endswith(t) for t in recipe.target_modules)]
    patches = pack_module("sampling.lora_patches").lora_patches
    out = []
    for seed in (1, 2):
        sd = {k: v.to(torch.bfloat16) for k, v in gm.random_lora(model, modules, rank=32, seed=seed, scale=0.01).items()}
        out.append(patches(model, sd, "slow" if seed == 1 else "fast"))
    return modules, out


def _expert_pairs(model, slow_p, fast_p, in_model: dict | None = None):
    """{mode: (slow, fast)}; with ``in_model``, each mode's model calls add their seconds to in_model[mode]."""
    merged = []
    for p in (slow_p, fast_p):
        merged.append(model.clone())
        merged[-1].add_patches(p, 1.0)
    forward, experts = pack_module("sampling.forward_experts").forward_expert_clones(
        model, {"slow": (slow_p, 1.0), "fast": (fast_p, 1.0)})
    pairs = {"merged": tuple(merged), "forward": (forward["slow"], forward["fast"])}
    if in_model is not None:
        for mode, pair in pairs.items():
            in_model[mode] = 0.0

            def timer(apply_model, a, mode=mode):
                start = time.perf_counter()
                out = apply_model(a["input"], a["timestep"], **a["c"])
                in_model[mode] += time.perf_counter() - start
                return out

            for clone in pair:
                clone.set_model_unet_function_wrapper(timer)
    return pairs, experts


def _run_pair(slow, fast, pos, neg, latent):
    import comfy.samplers

    sampling = pack_module("sampling.phase_guider")
    sigmas = comfy.samplers.calculate_sigmas(slow.get_model_object("model_sampling"), "simple", EXPERT_STEPS).cpu()
    switch = float(sigmas[EXPERT_STEPS // 2])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    guider = sampling.PhaseGuider(slow, fast, switch, 1.0, 1.0)
    guider.set_conds(pos, neg)
    seconds, _ = timed(lambda: guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=1))
    return seconds, guider.last_run.switch_seconds


def _weights_state(model):
    return {n: (id(p), p.data_ptr(), p.device, p._version, p.nbytes) for n, p in model.model.diffusion_model.named_parameters()}


def _bytes_written(before, after):
    """Bytes of base weights written in place (per write), replaced or moved between two states."""
    total = 0
    for name, (ident, ptr, device, version, nbytes) in before.items():
        a = after[name]
        if (a[0], a[1], a[2]) != (ident, ptr, device):
            total += nbytes
        total += (a[3] - version) * nbytes
    return total


def experts_at_scale(args, nodes, repeats):
    from benchmarks import models as gm
    import comfy.model_management as mm

    mm.unload_all_models()
    model = _expert_model(args.quick)
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    modules, (slow_p, fast_p) = _expert_patches(model)
    in_model = {}
    pairs, experts = _expert_pairs(model, slow_p, fast_p, in_model)
    pos, neg = gm.conditioning("flux", 1), gm.conditioning("flux", 2)
    latent = gm.empty_latent(8, 8)["samples"]
    for slow, fast in pairs.values():  # warm-up, and the first load of each mode
        _run_pair(slow, fast, pos, neg, latent)
    run_s = {k: [] for k in pairs}
    switch_s = {k: [] for k in pairs}
    written = {k: [] for k in pairs}
    model_s = {k: [] for k in pairs}
    for _ in range(repeats):
        for mode, (slow, fast) in pairs.items():
            # The other mode ran last: first a run that brings this mode's weights back (not timed), then the
            # measured run, as a user's second run of the same workflow.
            _run_pair(slow, fast, pos, neg, latent)
            before, in_model[mode] = _weights_state(model), 0.0
            t, sw = _run_pair(slow, fast, pos, neg, latent)
            model_s[mode].append(in_model[mode])
            written[mode].append(_bytes_written(before, _weights_state(model)))
            run_s[mode].append(t)
            switch_s[mode].append(sw)
    _run_pair(*pairs["merged"], pos, neg, latent)  # the host keeps the original weights while merged ones are loaded
    backups = sum(b.weight.nbytes for b in pairs["merged"][0].backup.values())
    mm.unload_all_models()
    memory = {mode: _probe(mode, args.quick) for mode in pairs}
    step = {mode: statistics.median(run_s[mode]) / EXPERT_STEPS for mode in pairs}
    pure = {mode: statistics.median(model_s[mode]) / EXPERT_STEPS for mode in pairs}
    what = (f"{params / 1e6:.0f}M-param FLUX-width model in bf16, rank-32 bf16 experts on "
            f"{len(modules)} layers ({experts.nbytes() / 2**20:.1f} MiB for both)")
    rows = [(f"switch, forward experts ({what})", f"{statistics.median(switch_s['forward']) * 1000:.2f} ms",
             f"{statistics.median(written['forward']) / 2**20:.0f} MiB of base weights written per run"),
            ("switch, merged experts (apply=merged)", f"{statistics.median(switch_s['merged']) * 1000:.1f} ms",
             f"{statistics.median(written['merged']) / 2**20:.0f} MiB of base weights written per run; "
             f"{statistics.median(switch_s['merged']) / step['merged']:.2f} of a step"),
            ("time per step in the model, forward experts / merged experts", f"{pure['forward'] / pure['merged']:.3f}x",
             f"{pure['forward'] * 1000:.0f} ms vs {pure['merged'] * 1000:.0f} ms: the model's forward passes only"),
            ("whole run per step, forward experts / merged experts", f"{step['forward'] / step['merged']:.3f}x",
             f"{step['forward'] * 1000:.0f} ms vs {step['merged'] * 1000:.0f} ms ({EXPERT_STEPS}-step runs, cfg 1; "
             "merged includes its weight swaps)"),
            ("memory added: forward experts", f"{memory['forward']['kept'] / 2**20:+.0f} MiB kept",
             f"{memory['forward']['peak'] / 2**20:+.0f} MiB peak RSS; the experts' own size: {experts.nbytes() / 2**20:.1f} MiB"),
            ("memory added: merged experts", f"{memory['merged']['kept'] / 2**20:+.0f} MiB kept",
             f"{memory['merged']['peak'] / 2**20:+.0f} MiB peak RSS; the host's weight backups: {backups / 2**20:.0f} MiB")]
    return rows


def _probe(mode: str, quick: bool) -> dict:
    """The memory one mode adds beyond a plain run of the same model (RSS kept after the runs, and peak RSS),
    measured in a fresh process."""
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--memory-probe", mode] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_probe(args):
    """(A child process.) RSS and peak RSS after a plain run, then after two runs with this mode's experts."""
    import gc
    import json
    import resource

    import psutil
    import tempfile

    start_in_process(Path(tempfile.mkdtemp(prefix="glance-bench-")))
    from benchmarks import models as gm

    model = _expert_model(args.quick)
    pos, neg = gm.conditioning("flux", 1), gm.conditioning("flux", 2)
    latent = gm.empty_latent(8, 8)["samples"]
    _run_pair(model, model, pos, neg, latent)
    gc.collect()
    base, base_peak = psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _, (slow_p, fast_p) = _expert_patches(model)  # after the baseline: the experts' own size counts
    pairs, _ = _expert_pairs(model, slow_p, fast_p)
    for _ in range(2):
        _run_pair(*pairs[args.memory_probe], pos, neg, latent)
    gc.collect()
    kept, peak = psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": args.memory_probe, "kept": kept - base, "peak": peak - base_peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only-experts", action="store_true", help="only measurement 2 (forward vs merged experts)")
    parser.add_argument("--memory-probe", choices=["forward", "merged"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    repeats = args.repeats or (3 if args.quick else 5)
    hidden, latent_px = (256, 16) if args.quick else (512, 32)

    import tempfile

    nodes = start_in_process(Path(tempfile.mkdtemp(prefix="glance-bench-")))
    if args.only_experts:
        return report(["2. forward vs merged experts"], experts_at_scale(args, nodes, repeats), args)
    import comfy.model_management as mm
    import comfy.sd
    from benchmarks import models as gm

    torch.manual_seed(0)
    model = gm.make_flux(seed=0, std=0.02, depth=4, single=4, hidden_size=hidden, num_heads=hidden // 64, axes_dim=[16, 24, 24])
    pos, neg = gm.conditioning("flux", 1), gm.conditioning("flux", 2)
    latent = gm.empty_latent(latent_px, latent_px)
    ksampler = nodes.NODE_CLASS_MAPPINGS["KSampler"]()
    glance = nodes.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"]
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

    # 2. the experts of one base: forward (default) vs merged, on a FLUX-width model stored in bf16
    rows += experts_at_scale(args, nodes, repeats)
    modules = [m for m in gm.linear_modules(model) if "blocks" in m]
    patches = pack_module("sampling.lora_patches").lora_patches
    slow_p, fast_p = (patches(model, gm.random_lora(model, modules, rank=32, seed=s, scale=0.01), f"lora {s}") for s in (1, 2))
    experts, _ = pack_module("sampling.forward_experts").forward_expert_clones(model, {"slow": (slow_p, 1.0), "fast": (fast_p, 1.0)})
    slow, fast = experts["slow"], experts["fast"]

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

    report([f"Model: Flux-architecture transformer, hidden {hidden}, 4+4 blocks, {params / 1e6:.1f}M params, "
            f"latent {latent_px}x{latent_px}"], rows, args)


def report(what: list[str], rows: list[tuple], args) -> None:
    host_version = pack_module("host_compat").host_version()
    flags = " ".join(f for f, on in (("--quick", args.quick), ("--only-experts", args.only_experts)) if on)
    print(f"\n{'; '.join(what)}; CPU ({torch.get_num_threads()} threads), interleaved repeats, medians; "
          f"load average {os.getloadavg()[0]:.1f} at the end.")
    print(f"Host: ComfyUI {host_version}. Command: python benchmarks/bench_phase_sampler.py {flags}\n")
    print("| measurement | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
