"""Fitted schedules against every stock choice: steps for the same picture (demo kit, CPU, one thread).

    python -m benchmarks.repro.schedules            (from the repository root; README gives its time here)

On held-out captions (never seen by the base model or any fit), against the converged picture (dpmpp_2m at
``--reference-steps`` steps of ``simple``; its distance to half as many steps is reported), for the samplers
euler, dpmpp_2m, res_multistep and uni_pc at 4, 6, 8 and 10 steps:

- every stock scheduler of the host, through the stock KSampler;
- OptimalStepsScheduler's tables where the model type fits (FLUX, Wan, Chroma: not the demo kit's SD3-family
  model, which the output says);
- Glance Fit Schedule for that sampler (the samplers it can model), from ``--fit-captions`` training captions
  (Conditioning (Combine)), sampled through the host's own SamplerCustom with that sampler;
- with ``--variants``: the fit's alternatives (teacher-local against student-state path, one caption against
  several, the old Euler-50 teacher) at 6 and 10 steps.

Writes ``out/schedules.json`` (the issue's shape, plus every row in ``table``) and ``out/schedules.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cli import emoji_data
from cli.host import pack_module, start_in_process

from .fitted import default_teacher
from .metrics import psnr

HERE = Path(__file__).resolve().parent
SAMPLERS = ("euler", "dpmpp_2m", "res_multistep", "uni_pc")
STEPS = (4, 6, 8, 10)
REFERENCE_SAMPLER = "dpmpp_2m"


def spread(indices: list[int], n: int) -> list[int]:
    return [indices[round(i * len(indices) / n)] for i in range(n)]


class Bench:
    def __init__(self, args):
        base_dir = args.out / "comfy_base_schedules"
        nodes = start_in_process(base_dir)
        import comfy.utils
        from cli import model_kit

        comfy.utils.set_progress_bar_enabled(False)
        model_kit.ensure_demo_models(base_dir / "models")
        self.nodes, self.N = nodes, nodes.NODE_CLASS_MAPPINGS
        loaders = model_kit.node_inputs()
        self.model = self.N["UNETLoader"]().load_unet(**loaders["UNETLoader"])[0]
        clip = self.N["CLIPLoader"]().load_clip(**loaders["CLIPLoader"])[0]
        self.vae = self.N["VAELoader"]().load_vae(**loaders["VAELoader"])[0]
        self.clip, self.data = clip, emoji_data.load()
        encode, data = self.N["CLIPTextEncode"](), self.data
        self.held = spread(data.indices(held_out=True), args.captions)
        self.train = spread(data.indices(held_out=False), args.fit_captions)
        self.held_captions = [data.captions[i] for i in self.held]
        self.train_captions = [data.captions[i] for i in self.train]
        self.held_conds = [encode.encode(clip, c)[0] for c in self.held_captions]
        self.train_conds = [encode.encode(clip, c)[0] for c in self.train_captions]
        self.negative = encode.encode(clip, "")[0]
        self.size = model_kit.IMAGE_SIZE // 8
        self.seeds, self.cfg = args.seeds, args.cfg

    def training_conds(self, n: int) -> tuple[list[str], list]:
        """``n`` training captions spread over the training set (the first ``--fit-captions`` of them when ``n`` is
        that count) and their conditionings."""
        captions = [self.data.captions[i] for i in spread(self.data.indices(held_out=False), n)]
        encode = self.N["CLIPTextEncode"]()
        return captions, [encode.encode(self.clip, c)[0] for c in captions]

    def latent(self, batch: int) -> dict:
        return {"samples": torch.zeros((batch, 16, self.size, self.size))}

    def pixels(self, latent: torch.Tensor) -> torch.Tensor:
        return self.N["VAEDecode"]().decode(self.vae, {"samples": latent})[0].float().clamp(0, 1)

    def stock(self, sampler: str, scheduler: str, steps: int) -> torch.Tensor:
        return torch.cat([self.N["KSampler"]().sample(self.model, 1000 + k, steps, self.cfg, sampler, scheduler, p,
                                                      self.negative, self.latent(self.seeds))[0]["samples"].float()
                          for k, p in enumerate(self.held_conds)])

    def custom(self, sampler: str, sigmas: torch.Tensor) -> torch.Tensor:
        select = self.N["KSamplerSelect"]().get_sampler(sampler)[0]
        out = []
        for k, p in enumerate(self.held_conds):
            r = self.N["SamplerCustom"]().sample(self.model, True, 1000 + k, self.cfg, p, self.negative, select, sigmas,
                                                 self.latent(self.seeds))
            out.append(r[0]["samples"].float())
        return torch.cat(out)

    def fit_node(self, sampler: str, steps: int, fine_steps: int | None, positive) -> tuple[torch.Tensor, dict, float]:
        """Glance Fit Schedule (the switch placed by the fit; the fine schedule the node's default unless
        ``fine_steps``); its sigmas, its saved record, seconds."""
        slow = steps // 2
        name = f"bench/{sampler}_{steps}_{time.time_ns()}"
        fine_default, scheduler = default_teacher()
        t0 = time.perf_counter()
        sigmas = self.N["GlanceFitSchedule"].execute(
            model=self.model, positive=positive, negative=self.negative, cfg=self.cfg, latent_image=self.latent(1),
            steps_slow=slow, steps_fast=steps - slow, fine_steps=fine_steps or fine_default,
            scheduler=scheduler, rollouts=len(positive), seed=0, switch_sigma=0.0, save_name=name,
            sampler_name=sampler).args[0]
        seconds = time.perf_counter() - t0
        import folder_paths

        record = json.loads(Path(folder_paths.get_full_path("glance_schedules", name + ".json")).read_text())
        return sigmas, record, seconds


def combine(conds: list) -> list:
    return [entry for c in conds for entry in c]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Fitted schedules against every stock scheduler, vs the converged picture.")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--captions", type=int, default=12, help="held-out captions")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per held-out caption")
    ap.add_argument("--fit-captions", type=int, default=8, help="training captions the fits learn from (one rollout each)")
    ap.add_argument("--fine-steps", type=int, default=None, help="the fit's teacher steps (default: the node's)")
    ap.add_argument("--reference-steps", type=int, default=400, help="steps of the converged reference")
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--steps", default=",".join(map(str, STEPS)))
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--variants", action="store_true", help="also the fit's alternatives, at 6 and 10 steps")
    ap.add_argument("--no-fitted", action="store_true", help="skip the node's fitted rows (e.g. with --variants)")
    ap.add_argument("--fit-samplers", default="euler,dpmpp_2m,res_multistep", help="samplers to fit (of --samplers)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rerender", action="store_true",
                    help="no sampling: summarise OUT/schedules.json's table again (rows, steps for the same picture) "
                         "and rewrite it and schedules.md")
    argv = sys.argv[1:] if argv is None else argv  # the settings record the command as it was given
    args = ap.parse_args(argv)
    if args.rerender:
        return rerender(args.out)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        run(args, argv)


def run(args, argv) -> None:
    t_start = time.time()
    b = Bench(args)
    import comfy.samplers

    steps_list = [int(s) for s in args.steps.split(",")]
    samplers = [s for s in args.samplers.split(",") if s in comfy.samplers.KSampler.SAMPLERS]
    sf = pack_module("schedules.sampler_steps")

    ref_latent = b.stock(REFERENCE_SAMPLER, "simple", args.reference_steps)
    ref = b.pixels(ref_latent)
    half = b.pixels(b.stock(REFERENCE_SAMPLER, "simple", args.reference_steps // 2))
    ref_note = (f"converged: {REFERENCE_SAMPLER}, {args.reference_steps} steps of simple; its pixel PSNR to "
                f"{args.reference_steps // 2} steps is {psnr(half, ref, 1.0):.1f} dB")
    euler50 = psnr(b.pixels(b.stock("euler", "simple", 50)), ref, 1.0)
    print(ref_note, f"(euler 50 steps: {euler50:.1f} dB)", flush=True)

    def score(latent: torch.Tensor) -> float:
        return round(psnr(b.pixels(latent), ref, 1.0), 2)

    table = []  # every measured row
    for sampler in samplers:
        for steps in steps_list:
            for scheduler in comfy.samplers.SCHEDULER_NAMES:
                try:
                    value = score(b.stock(sampler, scheduler, steps))
                except Exception as e:  # a scheduler that cannot give this many steps: say so
                    print(f"  {sampler} {scheduler} {steps}: {e}")
                    continue
                table.append(dict(sampler=sampler, steps=steps, schedule=scheduler, kind="stock", pixel_psnr=value))
            print(f"stock {sampler} x {steps} steps done ({time.time() - t_start:.0f} s)", flush=True)
    model_type_note = ("OptimalStepsScheduler: its tables are for FLUX, Wan and Chroma; the demo kit is an SD3-family "
                       "model, so none of them fits it (not run)")

    many = combine(b.train_conds)
    fits = {}
    for sampler in samplers:
        if args.no_fitted or sampler not in sf.SUPPORTED_SAMPLERS or sampler not in args.fit_samplers.split(","):
            continue
        for steps in steps_list:
            sigmas, record, seconds = b.fit_node(sampler, steps, args.fine_steps, many)
            value = score(b.custom(sampler, sigmas))
            fits[(sampler, steps)] = record
            images = record["model_passes"] / (2 * 50)  # cfg > 1: cond and uncond, two passes a step
            table.append(dict(sampler=sampler, steps=steps, schedule="fitted", kind="fitted", pixel_psnr=value,
                              sigmas=[round(float(s), 4) for s in sigmas], fit_seconds=round(seconds, 2),
                              model_passes=record["model_passes"], fit_cost_images_50_steps=round(images, 2),
                              teacher=record["teacher"], method=record["method"]))
            print(f"fitted {sampler} {steps}: {value} dB, {record['model_passes']} passes ({images:.1f} 50-step "
                  f"images), {seconds:.1f} s, teacher converged {record['teacher']['converged']} "
                  f"({time.time() - t_start:.0f} s)", flush=True)

    if args.variants:
        table += variants(b, args, steps_list, score)

    out = result_json(table, ref_note, steps_list)
    out.update(notes=[model_type_note, f"euler 50 steps of simple: {euler50:.1f} dB from the reference"],
               settings=dict(held_out_captions=b.held_captions, seeds_per_caption=args.seeds,
                             fit_captions=b.train_captions,
                             fine_steps=args.fine_steps or default_teacher()[0],
                             fine_scheduler=default_teacher()[1], cfg=args.cfg,
                             reference_steps=args.reference_steps, threads=args.threads,
                             command="python -m benchmarks.repro.schedules " + " ".join(argv or [])),
               seconds=round(time.time() - t_start, 1), table=table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "schedules.json").write_text(json.dumps(out, indent=1))
    (args.out / "schedules.md").write_text(render(out, steps_list))
    print(render(out, steps_list))
    print(f"done in {time.time() - t_start:.0f} s")


NOT_A_NODE_SETTING = ("rolled once",)  # sampler_distill.py's variants that the node's inputs cannot choose


def distilled_rows(out_dir: Path, saved: dict) -> dict:
    """{(sampler, steps): (pixel PSNR, "file: settings")} of the distilled experts from the ``sampler_distill*.json``
    runs beside ``schedules.json`` that scored the same held-out images against the same reference and distilled on
    the same fitted schedules (runs on other fits are left out): the best of the settings measured that the node's
    inputs can choose (training captions, rollouts, learning rate, rank), named in the source, as the best stock
    scheduler is picked for the stock rows; {} where there is none."""
    fits = {(t["sampler"], t["steps"]): t.get("sigmas") for t in saved["table"] if t["kind"] == "fitted"}
    found = {}
    for path in sorted(out_dir.glob("sampler_distill*.json")):
        run = json.loads(path.read_text())
        same = run["reference"] in saved["reference"] and all(
            run["settings"].get(k) == saved["settings"].get(k)
            for k in ("held_out_captions", "seeds_per_caption", "fit_captions", "cfg"))
        if not same:
            continue
        prompts = len(run["settings"].get("distill_captions") or run["settings"]["fit_captions"])
        for r in run["rows"]:
            key = (r["sampler"], r["steps"])
            if fits.get(key) != r["sigmas"]:
                continue
            for label, result in r["distilled"].items():
                if label not in NOT_A_NODE_SETTING and result["pixel_psnr"] > found.get(key, (float("-inf"), ""))[0]:
                    found[key] = (result["pixel_psnr"], f"{path.name}: {label}, {prompts} training captions")
    return found


def rerender(out_dir: Path) -> None:
    """The summary of a saved ``schedules.json`` made again (with the distilled experts of the ``sampler_distill*.json``
    runs that match it: ``distilled_rows``)."""
    saved = json.loads((out_dir / "schedules.json").read_text())
    steps_list = sorted({r["steps"] for r in saved["table"]})
    saved.update(result_json(saved["table"], saved["reference"], steps_list, distilled_rows(out_dir, saved)))
    (out_dir / "schedules.json").write_text(json.dumps(saved, indent=1))
    (out_dir / "schedules.md").write_text(render(saved, steps_list))
    print(render(saved, steps_list))


def variants(b: Bench, args, steps_list, score) -> list[dict]:
    """The fit's alternatives, at 6 and 10 steps (those of ``steps_list``)."""
    ss = pack_module("sampling.sampler_schedule")
    schedule_fit = pack_module("sampling.schedule_fit")
    fine_default, fine_scheduler = default_teacher()
    rows = []
    many = combine(b.train_conds)
    model = b.model
    latent = b.latent(1)["samples"]
    prompts_many = [[entry] for entry in many]
    for steps in [s for s in steps_list if s in (6, 10)]:
        slow = steps // 2
        for sampler in ("euler", "dpmpp_2m"):
            cases = [
                (f"teacher-local path, {len(prompts_many)} captions", dict(method=ss.TEACHER_LOCAL), prompts_many),
                (f"student-state path, {len(prompts_many)} captions", dict(method=ss.STUDENT_STATE), prompts_many),
                (f"teacher-local path refined on the end error, {len(prompts_many)} captions", dict(method=ss.REFINED), prompts_many),
                ("default path, 1 caption", {}, prompts_many[:1]),
                (f"default path, {len(prompts_many)} captions, Euler teacher", dict(teacher_sampler="euler"), prompts_many),
            ]
            for label, options, prompts in cases:
                settings = schedule_fit.FitSettings(cfg=b.cfg, steps_slow=slow, steps_fast=steps - slow,
                                                    fine_steps=args.fine_steps or fine_default,
                                                    scheduler=fine_scheduler,
                                                    rollouts=len(prompts) if len(prompts) > 1 else 4, seed=0)
                t0 = time.perf_counter()
                result = ss.fit_for_sampler(model, prompts, b.negative, latent, settings, sampler, check_rollouts=0,
                                            **options)
                value = score(b.custom(sampler, result.fit.sigmas))
                rows.append(dict(sampler=sampler, steps=steps, schedule=f"fitted: {label}", kind="variant",
                                 pixel_psnr=value, model_passes=result.fit.model_passes,
                                 fit_seconds=round(time.perf_counter() - t0, 2),
                                 sigmas=[round(float(s), 4) for s in result.fit.sigmas]))
                print(f"variant {sampler} {steps} {label}: {value} dB, {result.fit.model_passes} passes", flush=True)
    return rows


def result_json(table: list[dict], ref_note: str, steps_list, distilled: dict | None = None) -> dict:
    rows = []
    for sampler in dict.fromkeys(r["sampler"] for r in table):
        for steps in steps_list:
            mine = [r for r in table if r["sampler"] == sampler and r["steps"] == steps]
            stock = [r for r in mine if r["kind"] == "stock"]
            if not stock:
                continue
            best = max(stock, key=lambda r: r["pixel_psnr"])
            simple = next((r for r in stock if r["schedule"] == "simple"), None)
            fitted = next((r for r in mine if r["kind"] == "fitted"), None)
            rows.append(dict(sampler=sampler, steps=steps,
                             best_stock={"scheduler": best["schedule"], "pixel_psnr": best["pixel_psnr"]},
                             simple={"pixel_psnr": simple["pixel_psnr"]} if simple else None,
                             fitted={"pixel_psnr": fitted["pixel_psnr"]} if fitted else None,
                             distilled=({"pixel_psnr": distilled[(sampler, steps)][0],
                                         "from": distilled[(sampler, steps)][1]}
                                        if (sampler, steps) in (distilled or {}) else None)))
    best_any = {}
    for steps in steps_list:
        stock = [r for r in table if r["kind"] == "stock" and r["steps"] == steps]
        if stock:
            best = max(stock, key=lambda r: r["pixel_psnr"])
            best_any[str(steps)] = {"sampler": best["sampler"], "scheduler": best["schedule"], "pixel_psnr": best["pixel_psnr"]}
    out = {"reference": ref_note, "rows": rows, "best_stock_any": best_any}
    for r in rows:
        if r["fitted"]:
            r["fitted"]["stock_steps_for_same_picture"] = steps_for_same_picture(out, r["fitted"]["pixel_psnr"])
            if r["simple"]:  # the share of simple's squared error to the reference that the fit removes
                gain = r["fitted"]["pixel_psnr"] - r["simple"]["pixel_psnr"]
                r["fitted"]["gap_closed_vs_simple"] = round(1 - 10 ** (-gain / 10), 3)
    return out


def steps_for_same_picture(out: dict, value: float) -> int | None:
    """The fewest steps at which the best stock choice (any sampler and scheduler) is at least ``value``."""
    for steps, best in sorted(out["best_stock_any"].items(), key=lambda kv: int(kv[0])):
        if best["pixel_psnr"] >= value:
            return int(steps)
    return None


def _share(fitted: dict | None) -> str:
    closed = (fitted or {}).get("gap_closed_vs_simple")
    return "-" if closed is None else f"{100 * closed:.0f}%"


def render(out: dict, steps_list) -> str:
    lines = ["# Fitted schedules against every stock choice", "", f"Reference: {out['reference']}.", ""]
    lines += ["| sampler | steps | best stock scheduler | its PSNR | simple | fitted | distilled experts on it | fitted - best stock | "
              "best stock choice (any sampler) needs (of the step counts measured) | fit cost (50-step images) | gap closed vs simple |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    costs = {(t["sampler"], t["steps"]): t.get("fit_cost_images_50_steps") for t in out.get("table", []) if t["kind"] == "fitted"}
    for r in out["rows"]:
        f = r["fitted"]["pixel_psnr"] if r["fitted"] else None
        gap = f"{f - r['best_stock']['pixel_psnr']:+.1f}" if f is not None else "-"
        need = "-"
        if f is not None:
            same = r["fitted"].get("stock_steps_for_same_picture")
            top = max(int(k) for k in out["best_stock_any"])
            need = f"{same} steps" if same is not None else f"more than {top} steps"
        cost = costs.get((r["sampler"], r["steps"]))
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['best_stock']['scheduler']} | {r['best_stock']['pixel_psnr']:.1f} | "
                     f"{r['simple']['pixel_psnr']:.1f} | {f'{f:.1f}' if f is not None else '-'} | "
                     f"{format(r['distilled']['pixel_psnr'], '.1f') if r['distilled'] else '-'} | {gap} | {need} | "
                     f"{cost if cost is not None else '-'} | {_share(r['fitted'])} |")
    lines += ["", "Best stock choice at each step count (any sampler and scheduler):", ""]
    for steps, best in out["best_stock_any"].items():
        lines.append(f"- {steps} steps: {best['sampler']} + {best['scheduler']}, {best['pixel_psnr']:.1f} dB")
    variants = [r for r in out.get("table", []) if r["kind"] == "variant"]
    if variants:
        lines += ["", "Variants of the fit (pixel PSNR to the reference; model passes of the fit without its check):", "",
                  "| sampler | steps | variant | PSNR | model passes |", "|---|---:|---|---:|---:|"]
        for r in variants:
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['schedule']} | {r['pixel_psnr']:.1f} | {r['model_passes']} |")
    lines += ["", "All stock rows:", "", "| sampler | steps | " + " | ".join(
        dict.fromkeys(r["schedule"] for r in out.get("table", []) if r["kind"] == "stock")) + " |"]
    scheds = list(dict.fromkeys(r["schedule"] for r in out.get("table", []) if r["kind"] == "stock"))
    lines.append("|---|---:|" + "---:|" * len(scheds))
    for r in out["rows"]:
        vals = {t["schedule"]: t["pixel_psnr"] for t in out["table"]
                if t["kind"] == "stock" and t["sampler"] == r["sampler"] and t["steps"] == r["steps"]}
        lines.append(f"| {r['sampler']} | {r['steps']} | " + " | ".join(
            f"{vals[s]:.1f}" if s in vals else "-" for s in scheds) + " |")
    lines += [""] + [f"- {n}" for n in out.get("notes", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
