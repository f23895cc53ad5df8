#!/usr/bin/env python
"""Print the results table of docs/performance.md from a ``benchmarks/run.py --json`` file.

    python benchmarks/to_markdown.py results.json
"""

from __future__ import annotations

import json
import sys


def _num(v, spec=".2f", none="not installed"):
    return none if v is None else format(v, spec)


def _spread(num, den):
    """Per-round ratio range of two interleaved contenders (from the raw timings)."""
    r = [a / b for a, b in zip(num, den)]
    return f"per round {min(r):.2f}-{max(r):.2f}"


def _ok(value, op, bound):
    if value is None:
        return "n/a"
    good = value <= bound if op == "<=" else value >= bound
    return "met" if good else "**missed**"


def _target(r: dict, name: str, default: tuple[str, float]) -> tuple[str, float]:
    """The run's own target (``targets`` in its JSON, e.g. ">= 1.5"), else ``default``."""
    text = r.get("targets", {}).get(name)
    if not text:
        return default
    op, bound = text.split()
    return op, float(bound)


def markdown(r: dict) -> str:
    lines = [
        (f"Device: {r['device']}; torch {r['torch']} ({r['num_threads']} threads); "
        f"peers {', '.join(f'{k} {v}' for k, v in r['peers'].items())}; date {r['date']}; "
        f"commit `{r['git_commit']}`; command `{r['command']}`; "
        f"load average before / after {r['load_average_before']} / "
        f"{r['load_average_after']}; timed calls used "
         f"{_num(r.get('cpu_seconds_per_wall_second'), '.2f', '?')} CPU s per wall s; "
         f"total {r['wall_s']:.0f} s."),
        "",
        "| figure | measured | target | |",
        "| --- | --- | --- | --- |",
    ]
    if r.get("only") in ("apgd", "strong"):
        return "\n".join(lines + strong_lines(r))
    tr = r["training"]["n18_cifar10"]["median_s"]
    raw = r["training"]["n18_cifar10"]["times_s"]
    ratio = r["adv_clean_ratio"]
    op, bound = _target(r, "adv_clean_ratio", ("<=", 1.5))
    lines.append(f"| adversarial / clean iteration (N18 CIFAR-10, m 128, k 64) | {ratio:.3f} "
                 f"({_spread(raw['adversarial'], raw['clean'])}; "
                 f"{tr['adversarial'] * 1e3:.0f} ms / {tr['clean'] * 1e3:.0f} ms; attack part "
                 f"{tr['attack_part'] * 1e3:.0f} ms) | {op} {bound:g} | {_ok(ratio, op, bound)} |")
    if "adversarial_unfused" in tr:
        unf = tr["adversarial_unfused"] / tr["clean"]
        lines.append(f"| same, attack on the unfused network (`speed.fuse=false`) | {unf:.3f} "
                     f"({tr['adversarial_unfused'] * 1e3:.0f} ms) | | |")
    for name, a in r["attacks"].items():
        lines += attack_lines(r, name, a)
    lines += table_lines(r)
    lines += strong_lines(r)
    lines += ["", "H100 projections (not measurements; assumptions below):", "",
              ("| figure | eager (projected) | CUDA graphs (projected) | FLOPs alone | kernels "
              "| target |"), "| --- | --- | --- | --- | --- | --- |"]
    p = r["h100_projection"]
    for key, label, bound in (("n18_mnist_recipe", "N18 MNIST recipe", 60),
                              ("n18_cifar10_recipe", "N18 CIFAR-10 ResNet-20 recipe", 300),
                              ("whitebox_table", "white-box table", 30)):
        q = p[key]
        lines.append(f"| {label} | {q['eager_s']:.1f} s ({_ok(q['eager_s'], '<=', bound)}) | "
                     f"{q['graphed_s']:.1f} s ({_ok(q['graphed_s'], '<=', bound)}) | "
                     f"{q['flop_term_s']:.1f} s | {q['kernels']:.3g} | <= {bound} s |")
    return "\n".join(lines)


def attack_lines(r: dict, name: str, a: dict) -> list[str]:
    """Figure 2, one attack: throughput, speedups, overhead, agreement."""
    lines: list[str] = []
    ips = a["images_per_s"]
    fused = "ours_unfused" in ips
    lines.append(f"| {name} images/s (batch {a['batch']}): ours"
                 + (" / ours unfused" if fused else "") + " / torchattacks / Foolbox / "
                 "floor" + (" / fused floor" if fused else "") + f" | {ips['ours']:.0f}"
                 + (f" / {ips['ours_unfused']:.0f}" if fused else "")
                 + f" / {_num(ips['torchattacks'], '.0f')} / {_num(ips['foolbox'], '.0f')} / "
                 f"{a['floor_images_per_s']:.0f}"
                 + (f" / {a['floor_fused_images_per_s']:.0f}" if fused else "") + " | | |")
    if fused:
        lines.append(f"| {name} fused / unfused speedup | "
                     f"{a['fused_speedup_vs_unfused']:.2f}x "
                     f"({_spread(a['times_s']['ours_unfused'], a['times_s']['ours'])}) | | |")
    st = r["attack_speedup_vs_torchattacks"][name]
    sf = r["attack_speedup_vs_foolbox"][name]
    t = a["times_s"]
    for peer, v, label, default in (("torchattacks", st, "torchattacks", 1.0),
                                    ("foolbox", sf, "Foolbox", 5.0)):
        op, bound = _target(r, f"speedup_vs_{peer}", (">=", default))
        text = "not installed" if v is None else (
            f"{v:.2f}x ({_spread(t[peer], t['ours'])})")
        lines.append(f"| {name} speedup vs {label} | {text} | {op} {bound:g}x | "
                     f"{_ok(v, op, bound)} |")
    ov = a["overhead_over_floor_pct"]
    floor = "floor_fused" if fused else "floor"
    lines.append(f"| {name} overhead over the {'fused ' if fused else ''}floor "
                 f"({a['steps']} x forward + input gradient) | {ov:+.1f} % (ours / floor "
                 f"{_spread(t['ours'], t[floor])}) | <= 10 % | {_ok(ov, '<=', 10.0)} |")
    for peer in ("unfused", "torchattacks", "foolbox"):
        if peer not in a["agreement"]:
            continue
        ag = a["agreement"].get(peer)
        text = "not installed" if ag is None else (
            f"max abs diff {ag['max_abs_diff']:.3g} ({ag['max_abs_diff_pixels']:.2f} "
            f"pixel levels), {100 * ag['frac_pixels_diff_gt_1e-5']:.3f} % of pixels "
            "differ by > 1e-5")
        lines.append(f"| {name} agreement with {peer} | {text} | | |")
    return lines


def table_lines(r: dict) -> list[str]:
    """Figure 3: the white-box table, its floor and the recipes (extrapolated)."""
    lines: list[str] = []
    t = r["whitebox_table"]
    how = (f"extrapolated from {t['images']} images, batch {t['batch_size']}"
           if t["extrapolated"] else "measured")
    lines.append(f"| white-box table, 5 attacks x 4 eps x 10,000 images | "
                 f"{t['full_table_s']:.0f} s ({how}) | | |")
    if "unfused" in t:
        lines.append(f"| same on the unfused network (`fuse=False`) | "
                     f"{t['unfused']['full_table_s']:.0f} s ({how}) | | |")
    lines.append(f"| same with one epsilon per attack call (`max_batch=batch_size`) | "
                 f"{t['per_epsilon_calls']['full_table_s']:.0f} s ({how}) | | |")
    fl = t["floor_grad_passes_s"]
    lines.append(f"| table floor: gradient passes x floor pass time, as run / minimum | "
                 f"{fl['as_run']:.0f} s / {fl['minimum']:.0f} s (derived) | | |")
    for recipe, rc in r["recipes"].items():
        med = r["training"][recipe]["median_s"]
        lines.append(f"| {recipe} recipe ({rc['clean_iterations']} clean + "
                     f"{rc['adversarial_iterations']} adversarial iterations) | "
                     f"{rc['seconds'] / 3600:.2f} h (extrapolated from {med['clean'] * 1e3:.0f} "
                     f"/ {med['adversarial'] * 1e3:.0f} ms per clean / adversarial iteration, "
                     f"ratio {r['training'][recipe]['ratio']:.3f}) | | |")
    return lines


def strong_lines(r: dict) -> list[str]:
    """Figure 4: the strong attacks against torchattacks (a run before APGD-T and Square
    were added holds APGD-CE alone, under ``apgd``)."""
    strong = r.get("strong") or ({"apgd_ce": r["apgd"]} if "apgd" in r else {})
    lines: list[str] = []
    for name, a in strong.items():
        lines += apgd_ce_lines(r, a) if name == "apgd_ce" else other_lines(r, name, a)
        lines.append(accuracy_line(name, a))
    return lines


def _speedup_line(r: dict, name: str, a: dict, peer: str) -> str:
    sp = a["speedup_vs_torchattacks"]
    op, bound = _target(r, f"{name}_speedup_vs_torchattacks",
                        _target(r, "apgd_speedup_vs_torchattacks", (">=", 1.5)))
    text = ("not installed" if sp is None else
            f"{sp:.2f}x ({_spread(a['times_s']['torchattacks'], a['times_s']['ours'])})")
    return (f"| {name} speedup vs torchattacks `{peer}` | {text} | {op} {bound:g}x | "
            f"{_ok(sp, op, bound)} |")


def apgd_ce_lines(r: dict, a: dict) -> list[str]:
    """APGD-CE against torchattacks' APGD, with our unfused run and the fused floor."""
    ips = a["images_per_s"]
    return [
        (f"| apgd_ce, {a['steps']} iterations, eps {a['eps']:g}, images/s (batch {a['batch']}): "
         f"ours / ours unfused / torchattacks / fused floor | {ips['ours']:.1f} / "
         f"{ips['ours_unfused']:.1f} / {_num(ips.get('torchattacks'), '.1f')} / "
         f"{ips['floor_fused']:.1f} | | |"),
        _speedup_line(r, "apgd_ce", a, "APGD(loss='ce')"),
        (f"| apgd_ce overhead over the fused floor ({a['steps'] + 1} x forward + input "
         f"gradient) | {a['overhead_over_floor_pct']:+.1f} % | | |"),
    ]


def other_lines(r: dict, name: str, a: dict) -> list[str]:
    """APGD-T against torchattacks' APGDT, Square against its Square."""
    ips = a["images_per_s"]
    opts = ", ".join(f"{k} {v}" for k, v in a["options"].items())
    peer = "APGDT" if name == "apgd_t" else "Square(loss='margin')"
    lines = [
        (f"| {name}, {opts}, eps {a['eps']:g}, images/s (batch {a['batch']}): ours / "
         f"torchattacks | {ips['ours']:.1f} / {_num(ips.get('torchattacks'), '.1f')} | | |"),
        _speedup_line(r, name, a, peer),
    ]
    csp = a.get("compiled_speedup_vs_torchattacks")
    if csp is not None:  # our Square on the model compiled with freezing (audit --compile)
        op, bound = _target(r, f"{name}_compiled_speedup_vs_torchattacks", (">=", 1.5))
        spread = _spread(a["times_s"]["torchattacks"], a["times_s"]["ours_compiled"])
        lines.append(f"| {name} compiled (`audit --compile`): images/s; speedup vs "
                     f"torchattacks | {ips['ours_compiled']:.1f}; {csp:.2f}x ({spread}) | "
                     f"{op} {bound:g}x | {_ok(csp, op, bound)} |")
    return lines


def accuracy_line(name: str, a: dict) -> str:
    """Accuracy after the attack, ours / torchattacks; they must be equal or one image
    apart."""
    rob, ag = a["robust_accuracy"], a.get("agreement")
    wide = rob.get("torchattacks_widened")
    comp = rob.get("ours_compiled")
    value = (f"{rob['ours']:.3f} / {_num(rob.get('torchattacks'), '.3f')}"
             + (f" / {wide:.3f}" if wide is not None else "")
             + (f" / {comp:.3f}" if comp is not None else ""))
    if ag is None:
        check = " |"
    else:
        value += f" ({ag['images_apart']} images apart)"
        check = f" equal or 1 image apart | {'met' if ag['within_one_image'] else '**missed**'}"
    return (f"| {name} robust accuracy, labels = predictions: ours / torchattacks"
            + (" / torchattacks with the corner draw widened" if wide is not None else "")
            + (" / ours compiled" if comp is not None else "")
            + f" | {value} |{check} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as fh:
        print(markdown(json.load(fh)))
