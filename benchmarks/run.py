#!/usr/bin/env python
"""Speed benchmarks of cascade_adv, measured side by side in one run.

    python benchmarks/run.py --device cpu|cuda [--quick] [--only strong] [--json FILE]

Figures (docs/performance.md explains each one; the code is in ``benchmarks/bench/``,
one module per figure):

1. ``adv_clean_ratio``: one N18 adversarial-training iteration (pivot loss, step_ll,
   m = 128, k = 64, ResNet-20 on 24x24x3 crops) over one clean training iteration of
   the same model and batch size; both built and stepped by the library functions
   ``cascade_adv.training.train`` uses (``setup_training``, ``initial_model``,
   ``train_step``), timed forward + backward + optimizer step.
2. attack throughput (images/s) of ``step_fgsm`` and ``iter_fgsm`` (eps 16) against
   torchattacks 3.5.1 and Foolbox 3.3.4 on the same model, inputs and device, with an
   agreement check of the adversarial images, and against the floor: the model's own
   forward + input-gradient pass times the number of steps.
3. wall time of a whole white-box table (5 attacks x 4 epsilons x 10,000 images) and
   of the full N18 MNIST / CIFAR-10 recipes, extrapolated from measured per-image /
   per-iteration times (labelled as such), plus FLOP and kernel counts that project
   them to an H100 (labelled as projections).
4. the strong attacks against torchattacks 3.5.1 at the same settings, with an agreement
   check of the accuracy after the attack: ``apgd_ce`` (100 iterations, 1 restart,
   eps 16) against ``APGD(loss="ce")`` and the floor of its 101 forward + input-gradient
   passes; ``apgd_t`` against ``APGDT``; ``square`` against ``Square`` (``--only strong``,
   or its older name ``--only apgd``, runs this figure alone; ``--strong`` picks the
   attacks).

Contenders of one figure run interleaved (A B A B ...) after warm-up calls, and every
figure reports the median.  Random uint8 data stands in for MNIST / CIFAR-10: timing
does not depend on pixel values, and no dataset files are needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the figures' package, bench

import torch
from bench.attacks import bench_attacks, speedups
from bench.common import QUICK, SMOKE, TABLE_IMAGES, load_peers, settings
from bench.report import (
    device_name,
    finish,
    load_average,
    print_report,
    print_rows,
    run_context,
    strong_rows,
)
from bench.strong import STRONG, STRONG_EPS, bench_strong, speedup_keys
from bench.table import add_table_floor, bench_table, project_h100
from bench.training import bench_training, recipe_times

from cascade_adv.speed import resolve_speed


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, the white-box table on 64 images (extrapolated), "
                         f"the strong attacks on {QUICK.apgd_batch} images, APGD-T with "
                         f"{QUICK.apgd_t_targets} targets and Square with "
                         f"{QUICK.square_queries} queries")
    ap.add_argument("--smoke", action="store_true",
                    help="for testing this script only: the fewest rounds and images "
                         f"({SMOKE.apgd_steps} APGD iterations, {SMOKE.square_queries} Square "
                         "queries, no warm-up); runs in seconds, its numbers mean nothing")
    ap.add_argument("--json", metavar="FILE", help="also write every figure and timing here")
    ap.add_argument("--table-images", type=int, default=None,
                    help=f"images for the white-box table (default {TABLE_IMAGES}, quick "
                         f"{QUICK.table_images}); fewer than {TABLE_IMAGES} are extrapolated")
    ap.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                    help="the library's speed option (auto: bf16 autocast on CUDA, float32 on "
                         "CPU); peers always run float32")
    ap.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                    help="the library's speed option, our side only (auto: the model NHWC on "
                         "CUDA; the attacks' folded network in the layout the library "
                         "measures faster on this machine); peers always get the plain model")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (the library's speed option); compile time "
                         "falls in the warm-up calls, recompiles for new shapes do not")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["all", "strong", "apgd"], default="all",
                    help="strong (or apgd, its former name): figure 4 alone, the strong "
                         "attacks against torchattacks")
    ap.add_argument("--strong", default=",".join(STRONG), metavar="ATTACKS",
                    help=f"the strong attacks of figure 4, comma-separated (default "
                         f"{','.join(STRONG)})")
    ap.add_argument("--strong-eps", type=float, default=STRONG_EPS, metavar="PIXELS",
                    help=f"eps of APGD-T and Square in pixels (default {STRONG_EPS:g}; "
                         "APGD-CE runs at 16)")
    args = ap.parse_args(argv)
    args.strong = [a for a in args.strong.split(",") if a]
    if not args.strong or set(args.strong) - set(STRONG):
        ap.error(f"--strong: choose from {', '.join(STRONG)}")
    if not 0 < args.strong_eps <= 255:
        ap.error("--strong-eps must lie in (0, 255]")
    return ap, args


def main(argv: list[str] | None = None) -> int:
    ap, args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    s = settings(args.quick, args.smoke)
    if args.table_images is not None:
        if args.table_images < 1:
            ap.error("--table-images must be positive")
        s.table_images = args.table_images

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cl = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    speed_opts = {"precision": args.precision, "channels_last": cl, "compile": args.compile}
    resolve_speed(device, **speed_opts)  # unsupported options: one line, before any work
    started = time.perf_counter()
    load_before = load_average()
    peers = load_peers()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    log(f"cascade_adv benchmarks on {device_name(device)}, {mode} mode")
    context = run_context(args, device, peers, s, speed_opts, load_before)

    def strong() -> dict:
        log(f"4. strong attacks ({', '.join(args.strong)}) vs torchattacks, interleaved")
        return bench_strong(s, device, args.seed, peers, speed_opts, log, args.strong,
                            args.strong_eps)

    if args.only in ("strong", "apgd"):
        res = strong()
        report = {**speedup_keys(res), **context, **strong_entries(res)}
        return finish(report, started, args.json, device,
                      lambda: print_rows(report, strong_rows(res)))
    head, figures = run_all(args, s, device, peers, speed_opts, log, strong)
    report = {**head, **context, **figures}
    return finish(report, started, args.json, device, lambda: print_report(report))


def strong_entries(res: dict) -> dict:
    """Figure 4 in the JSON: ``strong`` (per attack) and ``apgd``, the APGD-CE entry under
    its former key."""
    return {**({"apgd": res["apgd_ce"]} if "apgd_ce" in res else {}), "strong": res}


def run_all(args, s, device: torch.device, peers, speed_opts: dict, log,
            strong) -> tuple[dict, dict]:
    """Figures 1-4 and what follows from them (recipes, the table's floor, the H100
    projection): the headline figures, and every figure in full."""
    speed_overrides = [f"speed.precision={args.precision}",
                       f"speed.channels_last={args.channels_last}",
                       f"speed.compile={str(args.compile).lower()}"]
    log("1. training iterations (adversarial vs clean), interleaved")
    training = bench_training(s, device, args.seed, speed_overrides, log)
    log("2. attack throughput vs peers and the floor, interleaved")
    attack_res = bench_attacks(s, device, args.seed, peers, speed_opts, log)
    log("3. white-box table wall time")
    table = bench_table(s, device, args.seed, speed_opts, log)
    strong_res = strong()
    head = {
        "adv_clean_ratio": training["n18_cifar10"]["ratio"],
        "attack_speedup_vs_torchattacks": speedups(attack_res, "torchattacks"),
        "attack_speedup_vs_foolbox": speedups(attack_res, "foolbox"),
        **speedup_keys(strong_res),
        "overhead_over_floor_pct": {k: v["overhead_over_floor_pct"]
                                    for k, v in attack_res.items()},
    }
    add_table_floor(table, attack_res)
    figures = {"training": training, "attacks": attack_res, "whitebox_table": table,
               "recipes": recipe_times(training), **strong_entries(strong_res),
               "h100_projection": project_h100(training, table)}
    return head, figures


if __name__ == "__main__":
    sys.exit(main())
