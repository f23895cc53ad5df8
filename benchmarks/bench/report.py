"""The printed table, what a run records about where it ran, and the JSON file."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import ROOT, TABLE_IMAGES, TARGETS, Settings, check, cpu_usage, fmt
from bench.table import TABLE_ATTACKS, TABLE_EPS
from cascade_adv.speed import resolve_speed

Rows = list[tuple[str, str, str]]  # (figure, value, target)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def spread(res: dict, peer: str, value: float | None) -> str:
    if value is None:
        return fmt(value)
    q = res["speedup_per_round"][peer]
    return f"{value:.2f} (per round {q['min']:.2f}-{q['max']:.2f})"


def training_rows(r: dict) -> Rows:
    tr = r["training"]["n18_cifar10"]
    med = tr["median_s"]
    return [("adv/clean iteration ratio (N18 CIFAR, m 128, k 64)",
             (f"{r['adv_clean_ratio']:.3f} ({med['adversarial']*1e3:.0f} / "
              f"{med['clean']*1e3:.0f} ms; attack part {med['attack_part']*1e3:.0f} ms)"),
             check("adv_clean_ratio", r["adv_clean_ratio"])),
            ("  same, attack unfused (speed.fuse=false)",
             f"{tr['ratio_unfused']:.3f} ({med['adversarial_unfused']*1e3:.0f} ms)", "")]


def attack_rows(r: dict) -> Rows:
    rows: Rows = []
    for name, a in r["attacks"].items():
        ips = a["images_per_s"]
        rows.append(((f"{name} images/s: ours | unfused | torchattacks | foolbox | floor | "
                      "fused floor"),
                     (f"{ips['ours']:.0f} | {ips['ours_unfused']:.0f} | "
                      f"{fmt(ips['torchattacks'], '.0f')} | {fmt(ips['foolbox'], '.0f')} | "
                      f"{a['floor_images_per_s']:.0f} | {a['floor_fused_images_per_s']:.0f}"), ""))
        rows.append((f"{name} fused / unfused speedup", f"{a['fused_speedup_vs_unfused']:.2f}",
                     ""))
        st = r["attack_speedup_vs_torchattacks"][name]
        sf = r["attack_speedup_vs_foolbox"][name]
        rows.append((f"{name} speedup vs torchattacks", spread(a, "torchattacks", st),
                     check("speedup_vs_torchattacks", st)))
        rows.append((f"{name} speedup vs foolbox", spread(a, "foolbox", sf),
                     check("speedup_vs_foolbox", sf)))
        rows.append((f"{name} overhead over fused floor (fwd + input grad x {a['steps']})",
                     f"{a['overhead_over_floor_pct']:+.1f} %",
                     check("overhead_over_floor_pct", a["overhead_over_floor_pct"])))
        for peer in ("unfused", "torchattacks", "foolbox"):
            ag = a["agreement"][peer]
            rows.append((f"{name} agreement with {peer}",
                         "not installed" if ag is None else
                         f"max |diff| {ag['max_abs_diff']:.2e}, "
                         f"{100 * ag['frac_pixels_diff_gt_1e-5']:.3f} % pixels > 1e-5", ""))
    return rows


def table_rows(r: dict) -> Rows:
    t = r["whitebox_table"]
    label = f"extrapolated from {t['images']} images" if t["extrapolated"] else "measured"
    fl = t["floor_grad_passes_s"]
    rows = [(f"white-box table {len(TABLE_ATTACKS)}x{len(TABLE_EPS)}x{TABLE_IMAGES}",
             f"{t['full_table_s']:.0f} s ({label}; {t['images_per_s']:.1f} images/s)", ""),
            ("  same, unfused (fuse=False)", f"{t['unfused']['full_table_s']:.0f} s ({label})",
             ""),
            ("  same, one epsilon per attack call (max_batch=batch_size)",
             f"{t['per_epsilon_calls']['full_table_s']:.0f} s ({label})", ""),
            ("  its floor: gradient passes x floor pass time (as run | minimum)",
             f"{fl['as_run']:.0f} s | {fl['minimum']:.0f} s (derived)", "")]
    for recipe, res in r["training"].items():
        rc = r["recipes"][recipe]
        rows.append(((f"{recipe} recipe ({rc['clean_iterations']} clean + "
                      f"{rc['adversarial_iterations']} adv it)"),
                     (f"{rc['seconds'] / 3600:.2f} h (extrapolated; "
                      f"{res['median_s']['clean']*1e3:.0f} / "
                      f"{res['median_s']['adversarial']*1e3:.0f} ms per clean / adv it, "
                      f"ratio {res['ratio']:.3f})"), ""))
    return rows


def projection_rows(r: dict) -> Rows:
    rows: Rows = []
    p = r["h100_projection"]
    for key, target in (("n18_mnist_recipe", "h100_n18_mnist_recipe_s"),
                        ("n18_cifar10_recipe", "h100_n18_cifar10_recipe_s"),
                        ("whitebox_table", "h100_whitebox_table_s")):
        q = p[key]
        rows.append((f"H100 PROJECTION {key}, eager",
                     (f"{q['eager_s']:.1f} s (FLOPs alone {q['flop_term_s']:.1f} s, "
                      f"{q['kernels']:.3g} kernels)"), check(target, q["eager_s"])))
        rows.append((f"H100 PROJECTION {key}, CUDA graphs", f"{q['graphed_s']:.1f} s",
                     check(target, q["graphed_s"])))
    return rows


def strong_rows(strong: dict) -> Rows:
    """Figure 4's report lines, per strong attack."""
    rows: Rows = []
    for name, a in strong.items():
        ips = a["images_per_s"]
        sp, q = a["speedup_vs_torchattacks"], a["speedup_per_round"]
        rob, ag = a["robust_accuracy"], a["agreement"]
        what = ", ".join(f"{k} {v}" for k, v in a["options"].items())
        head = f"{name} (eps {a['eps']:g}, {what}, batch {a['batch']})"
        if name == "apgd_ce":
            rows.append((f"{head} images/s: ours | unfused | torchattacks | fused floor",
                         (f"{ips['ours']:.1f} | {ips['ours_unfused']:.1f} | "
                          f"{fmt(ips.get('torchattacks'), '.1f')} | {ips['floor_fused']:.1f}"),
                         ""))
        else:
            rows.append((f"{head} images/s: ours | torchattacks",
                         f"{ips['ours']:.1f} | {fmt(ips.get('torchattacks'), '.1f')}", ""))
        rows.append((f"{name} speedup vs torchattacks",
                     fmt(sp) if sp is None else
                     f"{sp:.2f} (per round {q['min']:.2f}-{q['max']:.2f})",
                     check(f"{name}_speedup_vs_torchattacks", sp)))
        if "compiled_speedup_vs_torchattacks" in a:
            csp = a["compiled_speedup_vs_torchattacks"]
            label = f"{name} compiled (audit --compile) images/s | speedup vs torchattacks"
            rows.append((label, f"{ips['ours_compiled']:.1f} | {csp:.2f}",
                         check(f"{name}_compiled_speedup_vs_torchattacks", csp)))
        if name == "apgd_ce":
            rows.append(("apgd_ce overhead over the fused floor",
                         f"{a['overhead_over_floor_pct']:+.1f} %", ""))
        wide = rob.get("torchattacks_widened")
        comp = rob.get("ours_compiled")
        rows.append((f"{name} accuracy after the attack (labels = predictions): ours | "
                     "torchattacks" + (" | widened corner draw" if wide is not None else "")
                     + (" | ours compiled" if comp is not None else ""),
                     f"{rob['ours']:.3f} | {fmt(rob.get('torchattacks'), '.3f')}"
                     + (f" | {wide:.3f}" if wide is not None else "")
                     + (f" | {comp:.3f}" if comp is not None else ""),
                     "" if ag is None else
                     f"{ag['images_apart']} images apart "
                     f"{'ok' if ag['within_one_image'] else 'DIFFER'}"))
    return rows


def print_report(r: dict) -> None:
    rows = training_rows(r) + attack_rows(r) + table_rows(r) + projection_rows(r)
    print_rows(r, rows + strong_rows(r["strong"]))


def print_rows(r: dict, rows: Rows) -> None:
    """The report's header line and its (figure, value, target) rows as a table."""
    w1 = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in rows)
    print()
    print(f"device {r['device']} | torch {r['torch']} | threads {r['num_threads']} | "
          f"commit {r['git_commit']} | {r['date']}")
    print(f"{'figure':<{w1}}  {'value':<{w2}}  target")
    print("-" * (w1 + w2 + 20))
    for a, b, c in rows:
        print(f"{a:<{w1}}  {b:<{w2}}  {c}")


def run_context(args, device: torch.device, peers, s: Settings, speed_opts: dict,
                load_before) -> dict:
    """What a run records about where and how it ran."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1],
                                                      *sys.argv]),
        "quick": args.quick,
        "smoke": args.smoke,
        "only": args.only,
        "num_threads": torch.get_num_threads(),
        "speed": resolve_speed(device, **speed_opts).describe(),
        "python": platform.python_version(),
        "peers": {k: (getattr(v, "__version__", "?") if v is not None else None)
                  for k, v in peers.items()},
        "settings": s.__dict__,
        "load_average_before": load_before,
        "targets": {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items()},
    }


def finish(report: dict, started: float, json_path: str | None, device: torch.device,
           print_table: Callable[[], None]) -> int:
    """Close the run: load, CPU use and wall time, the table, the JSON file."""
    report["load_average_after"] = load_average()
    report["cpu_seconds_per_wall_second"] = cpu_usage()
    report["wall_s"] = time.perf_counter() - started
    print_table()
    print(f"\ntotal {report['wall_s']:.0f} s; load average before "
          f"{report['load_average_before']}, after {report['load_average_after']}")
    usage = report["cpu_seconds_per_wall_second"]
    if device.type == "cpu" and usage is not None:
        print(f"timed calls used {usage:.2f} CPU seconds per second with "
              f"{torch.get_num_threads()} threads"
              + (" - LOW: another process competed for the cores; timings are inflated"
                 if usage < 0.8 * torch.get_num_threads() else ""))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0
