#!/usr/bin/env python
"""How fast can Square get? The forward pass that bounds it, in every form at hand.

    python benchmarks/forward_floor.py [--threads 2] [--batch 64] [--rounds 15] [--json FILE]

Square (figure 4 of ``benchmarks/run.py``) spends its time in one forward pass per query
of the images still standing, so its speedup over torchattacks is bounded by how much
faster our forward pass is than the plain float32 model torchattacks calls.  This
script times, interleaved, one forward pass of figure 4's network (ResNet-20 on
24x24x3, random weights, batch ``--batch``) as:

* ``plain``: the model in eval mode, NCHW (as torchattacks runs it);
* ``ours``: the attack network our attacks run on (BatchNorm folded, the layout the
  library measures faster here; ``cascade_adv.attacks.attack_network``);
* ``torchscript``: ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``
  (oneDNN weights packed once, convolution + ReLU fused);
* ``inductor``: ``torch.compile`` with ``torch._inductor.config.freezing`` (packed
  weights, fused epilogues; needs a C++ compiler, reported unavailable without one),
  for this batch size alone;
* ``inductor_dynamic``: the same compiled for any batch size, as Square would need it
  (on a CPU its batch shrinks after every query that breaks an image).

Each contender's speedup over ``plain`` is the most a Square on that forward pass could
gain over torchattacks if everything else in a query cost nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the figures' package, bench

import torch
from bench.common import attack_models, fused_network, interleaved, median
from bench.report import device_name


def contenders(batch: int, seed: int, log) -> tuple[dict, dict]:
    """name -> a call of one forward pass; and the setup seconds of each."""
    cpu = torch.device("cpu")
    model, mine, speed = attack_models(cpu, seed, {})
    x = torch.rand(batch, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
    ours = fused_network(mine, x, speed)
    xo = x.contiguous(memory_format=torch.channels_last) if speed.attack_layout else x
    setup: dict[str, float | None] = {"plain": 0.0, "ours": 0.0}
    calls = {"plain": lambda: model(x), "ours": lambda: ours(xo)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        t0 = time.perf_counter()
        with torch.no_grad():
            script = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
        setup["torchscript"] = time.perf_counter() - t0
    calls["torchscript"] = lambda: script(x)
    try:
        import torch._inductor.config as inductor

        inductor.freezing = True
        for name, dynamic in (("inductor", False), ("inductor_dynamic", True)):
            t0 = time.perf_counter()
            compiled = torch.compile(model, dynamic=dynamic)
            with torch.no_grad():
                compiled(x)
            setup[name] = time.perf_counter() - t0
            calls[name] = functools.partial(compiled, x)
    except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported build
        log(f"inductor unavailable: {type(exc).__name__}: {str(exc)[:200]}")
    with torch.no_grad():
        ref = model(x)
        for name, fn in calls.items():
            err = float((fn() - ref).abs().max())
            log(f"  {name}: max |logit difference| to plain {err:.2e}")
    return calls, setup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="images per forward (default 64)")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--calls", type=int, default=10, help="forwards per round (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    calls, setup = contenders(args.batch, args.seed, print)

    def repeat(fn):
        def run():
            with torch.no_grad():
                for _ in range(args.calls):
                    fn()
        return run

    times = interleaved({k: repeat(f) for k, f in calls.items()}, args.rounds, 2,
                        torch.device("cpu"))
    ms = {k: [1000 * t / args.calls for t in v] for k, v in times.items()}
    res = {"date": time.strftime("%Y-%m-%d"), "device": device_name(torch.device("cpu")),
           "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
           "command": "python benchmarks/forward_floor.py " + " ".join(argv or sys.argv[1:]),
           "setup_s": setup, "forward_ms": ms,
           "median_ms": {k: median(v) for k, v in ms.items()},
           "min_ms": {k: min(v) for k, v in ms.items()}}
    res["speedup_vs_plain"] = {k: res["median_ms"]["plain"] / v
                               for k, v in res["median_ms"].items()}
    print(f"{res['device']}, torch {res['torch']}, {args.threads} threads, batch {args.batch}")
    for k in ms:
        print(f"  {k:12s} median {res['median_ms'][k]:7.2f} ms  min {res['min_ms'][k]:7.2f} ms"
              f"  {res['speedup_vs_plain'][k]:.2f}x plain")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
