#!/usr/bin/env python
"""Independent check of the strong attacks: ours against torchattacks 3.5.1.

    python benchmarks/strong_check.py --checkpoint runs/quickstart/baseline \\
        --checkpoint runs/quickstart/pivot --eps 16,32 [--limit 1000] [--json FILE]

For every model and epsilon, the top-1 accuracy of the test images (all of them, or the
first ``--limit``) under

* ``apgd_ce``  vs torchattacks ``APGD(loss="ce")``,
* ``apgd_t``   vs torchattacks ``APGDT`` (``--targets`` target classes, by default
  classes - 1; torchattacks takes it as ``n_classes = targets + 1``),
* ``fab_t``    vs torchattacks ``FAB(multi_targeted=True)`` (the same targets; it takes
  them as ``n_classes = targets + 1``; one run per target, from the clean image),
* ``square``   vs torchattacks ``Square(loss="margin")``,

at the same eps, iterations, queries and restarts (``--steps``, ``--queries``,
``--restarts``; AutoAttack's standard values by default), both seeded with 0.  Ours runs
as every command runs it (on the folded inference network), theirs on the model as it is.
torchattacks (like the authors' Square code) draws a window's corner from [0, h - s - 1]
and never searches an image's last row and column; the ``square_fixed`` column runs it
with that draw widened to [0, h - s], as ours, to show how much of a Square difference
that explains.  The accuracies must agree within 1 point (docs/results.md, "Strong
attacks: independent check").  With ``--json``, the file is rewritten after every cell
and a rerun skips the cells it already holds, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch

from cascade_adv import attacks
from cascade_adv.evaluation import prepare_images
from cascade_adv.training.runs import load_for_eval

#: (our attack, torchattacks class, torchattacks keyword arguments from the settings
#: and the APGD-T target count)
PAIRS = {
    "apgd_ce": ("APGD", lambda s, c: {"steps": s.steps, "n_restarts": s.restarts,
                                      "loss": "ce"}),
    "apgd_t": ("APGDT", lambda s, c: {"steps": s.steps, "n_restarts": s.restarts,
                                      "n_classes": c + 1}),
    "fab_t": ("FAB", lambda s, c: {"steps": s.steps, "n_restarts": s.restarts,
                                   "multi_targeted": True, "n_classes": c + 1}),
    "square": ("Square", lambda s, c: {"n_queries": s.queries, "n_restarts": 1,
                                       "loss": "margin"}),
}


def ours(name: str, model, x, y, eps: float, s, targets: int) -> torch.Tensor:
    opts = ({"queries": s.queries} if name == "square"
            else {"steps": s.steps, "restarts": s.restarts})
    if name in ("apgd_t", "fab_t"):
        opts["targets"] = targets
    return attacks.run(name, model, x, y, eps=eps, generator=torch.Generator().manual_seed(0),
                       **opts)


def theirs(ta, name: str, model, x, y, eps: float, s, targets: int,
           widen: bool = False) -> torch.Tensor:
    cls_name, kwargs = PAIRS[name]
    cls = getattr(ta, cls_name)
    atk = cls(model, norm="Linf", eps=eps / 255, seed=0, **kwargs(s, targets))
    if widen:  # corners from [0, h - s] instead of [0, h - s - 1]
        draw = cls.random_int
        atk.random_int = lambda low=0, high=1, shape=(1,): draw(atk, low, high + 1, list(shape))
    return atk(x, y)


def correct(model, x, y, batch: int) -> int:
    total = 0
    for i in range(0, len(x), batch):
        total += int((attacks.predict(model, x[i:i + batch]).argmax(dim=1)
                      == y[i:i + batch]).sum())
    return total


def batched(fn, x, y, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


def check_model(spec: str, args, ta, log, done: dict, save) -> list[dict]:
    m, data = load_for_eval(spec, None, args.data_root, "test", args.device, args.limit)
    model = m.model.eval()
    x = prepare_images(model, data.images)
    y = data.labels.to(x.device)
    n, classes = len(y), int(attacks.predict(model, x[:1]).shape[1])
    clean = correct(model, x, y, args.batch_size)
    targets = args.targets or classes - 1
    rows = []
    for eps in args.eps:
        for name in args.attacks:
            if (m.name, eps, name) in done:
                rows.append(done[m.name, eps, name])
                continue
            row = {"model": m.name, "eps": eps, "attack": name, "images": n,
                   "clean": 100 * clean / n}
            contenders = {"ours": functools.partial(ours, name, model, eps=eps, s=args,
                                                    targets=targets),
                          "torchattacks": functools.partial(theirs, ta, name, model, eps=eps,
                                                            s=args, targets=targets)}
            if name == "square":
                contenders["torchattacks_widened"] = functools.partial(
                    theirs, ta, name, model, eps=eps, s=args, targets=targets, widen=True)
            for who, fn in contenders.items():
                t0 = time.perf_counter()
                adv = batched(fn, x, y, args.batch_size)
                row[f"{who}_s"] = time.perf_counter() - t0
                row[who] = 100 * correct(model, adv, y, args.batch_size) / n
            row["difference"] = row["ours"] - row["torchattacks"]
            log(f"{m.name} eps {eps:g} {name}: ours {row['ours']:.2f} torchattacks "
                f"{row['torchattacks']:.2f}"
                + (f" (widened {row['torchattacks_widened']:.2f})" if name == "square" else "")
                + f" | {row['ours_s']:.0f} s / {row['torchattacks_s']:.0f} s")
            rows.append(row)
            done[m.name, eps, name] = row
            save(list(done.values()))
    return rows


def markdown(rows: list[dict]) -> str:
    out = [("| model | eps | attack | images | clean | ours | torchattacks | ours - theirs "
            "| torchattacks, corner draw widened |"),
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        wide = r.get("torchattacks_widened")
        out.append(f"| {r['model']} | {r['eps']:g} | {r['attack']} | {r['images']} | "
                   f"{r['clean']:.2f} | {r['ours']:.2f} | {r['torchattacks']:.2f} | "
                   f"{r['difference']:+.2f} | {'' if wide is None else f'{wide:.2f}'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, metavar="RUN",
                    help="a trained run (folder or weights; NAME=PATH names it); repeat it")
    ap.add_argument("--eps", default="16,32",
                    help="epsilons in pixel units of [0, 255], comma-separated (default 16,32)")
    ap.add_argument("--attacks", default="apgd_ce,apgd_t,square",
                    help="any of apgd_ce, apgd_t, fab_t, square (default apgd_ce,apgd_t,square)")
    ap.add_argument("--steps", type=int, default=100,
                    help="APGD and FAB-T iterations (default 100)")
    ap.add_argument("--restarts", type=int, default=1,
                    help="APGD and FAB-T restarts (default 1)")
    ap.add_argument("--targets", type=int, default=None,
                    help="APGD-T and FAB-T target classes (default: classes - 1)")
    ap.add_argument("--queries", type=int, default=5000, help="Square queries (default 5000)")
    ap.add_argument("--limit", type=int, default=None,
                    help="the first N test images (default: all)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", metavar="FILE", help="also write the rows and settings here")
    args = ap.parse_args(argv)
    try:
        args.eps = attacks.validate_eps(args.eps.split(","), "--eps", required=True)
    except ValueError as err:
        ap.error(str(err))
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = sorted(set(args.attacks) - set(PAIRS))
    if unknown or not args.attacks:
        ap.error(f"--attacks: choose from {', '.join(PAIRS)}")
    if args.targets is not None and args.targets < 1:
        ap.error("--targets must be a positive number of target classes")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be a positive number of images")
    try:
        import torchattacks as ta
    except ImportError:
        ap.error("torchattacks is not installed: pip install --no-deps torchattacks==3.5.1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    done: dict = {}
    if args.json and Path(args.json).exists():
        saved = json.loads(Path(args.json).read_text())
        if saved["settings"] != settings:
            ap.error(f"{args.json} holds a check with other settings: choose another --json")
        done = {(r["model"], r["eps"], r["attack"]): r for r in saved["rows"]}

    def save(rows: list[dict]) -> None:
        if not args.json:
            return
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps({
            "rows": rows, "settings": settings, "torch": torch.__version__,
            "torchattacks": ta.__version__, "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "command": " ".join(["python", *sys.argv]),
            "wall_s": time.perf_counter() - started}, indent=2) + "\n")
        tmp.replace(args.json)

    rows = [r for spec in args.checkpoint for r in check_model(spec, args, ta, log, done, save)]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
