"""Figure 3: the wall time of a whole white-box table (5 attacks x 4 epsilons x 10,000
images), measured or extrapolated from fewer images, its floor, and FLOP and kernel
counts that project the table and the N18 recipes to an H100 (projections)."""

from __future__ import annotations

import functools
import math

import torch

from bench.common import (
    RESNET20_CIFAR,
    TABLE_IMAGES,
    Settings,
    count_ops,
    fake_dataset,
    interleaved,
)
from bench.training import RECIPES
from cascade_adv import attacks
from cascade_adv.evaluation import evaluate_whitebox
from cascade_adv.models import build_model

#: The white-box table of one model (N18 table 2 layout).
TABLE_ATTACKS = ["step_ll", "step_fgsm", "step_rnd", "iter_ll", "iter_fgsm"]
TABLE_EPS = [2, 4, 8, 16]
TABLE_BATCH = 500  # evaluate_whitebox's default batch_size

#: H100 projection assumptions (stated in the JSON and in docs/performance.md).
H100 = {
    "bf16_dense_peak_flops": 989e12,  # H100 SXM5, dense (no sparsity)
    "sustained_fraction": 0.10,  # ResNet-20's 16-64-channel convolutions use tensor cores poorly
    "eager_host_s_per_kernel": 8e-6,  # eager: Python + dispatcher + launch, host side
    "graphed_s_per_kernel": 2e-6,  # CUDA graphs / torch.compile: launch gap + minimum kernel
    "flops_per_mac": 2,
    "backward_over_forward": 2.0,  # a backward pass costs 2 forwards (weights + inputs)
}


def table_passes() -> dict[str, float]:
    """Gradient passes (forward + input-backward) and forward-only passes per image of the
    white-box table, as ``evaluate_whitebox`` runs it and as the minimum."""
    steps = [int(attacks.iterative_steps(e)) for e in TABLE_EPS]
    n_one, n_iter, n_eps = 3, 2, len(TABLE_EPS)
    minimum = n_one * n_eps + n_iter * sum(steps)
    return {
        # the iterative loop drops rows whose own step count is done (attacks.core.iterate),
        # so stacked epsilons cost exactly the minimum
        "grad_passes_as_run": minimum,
        "grad_passes_minimum": minimum,
        "forward_passes": 1 + len(TABLE_ATTACKS) * n_eps + n_eps,  # clean, adv, iter_ll labels
    }


def bench_table(s: Settings, device: torch.device, seed: int, speed_opts: dict, log) -> dict:
    torch.manual_seed(seed)
    model = build_model(RESNET20_CIFAR).to(device).eval()
    n = s.table_images
    data = fake_dataset("cifar10", n, (3, 32, 32), device, seed, split="test")
    batch = min(TABLE_BATCH, n)
    warm = data.subset(min(8, n))

    def run(d, b, max_batch=None, opts=speed_opts, fuse=True):
        return evaluate_whitebox(model, d, TABLE_ATTACKS, TABLE_EPS, batch_size=b,
                                 max_batch=max_batch, progress=False, seed=seed, fuse=fuse,
                                 **opts)

    run(warm, 8)
    run(warm, 8, 8)
    run(warm, 8, fuse=False)
    log(f"  white-box table: {len(TABLE_ATTACKS)} attacks x {len(TABLE_EPS)} eps x {n} images "
        f"(batch {batch}), as run and with one epsilon per attack call ...")
    # the default stacks the 4 epsilons into one attack call (iterative attacks then run
    # all rows to the largest step count); max_batch=batch_size calls once per epsilon
    times = interleaved({"default": functools.partial(run, data, batch),
                         "unfused": functools.partial(run, data, batch, fuse=False),
                         "per_epsilon_calls": functools.partial(run, data, batch, batch)},
                        rounds=1, warmup=0, device=device)
    seconds = times["default"][0]
    per_eps = times["per_epsilon_calls"][0]
    unfused = times["unfused"][0]
    # kernels for the projection, with CUDA's default speed options (see cuda_like_overrides)
    cuda_like = dict(speed_opts)
    if device.type == "cpu" and torch.amp.is_autocast_available("cpu"):
        cuda_like.update(precision="bf16", channels_last=True)
    run(warm, 8, opts=cuda_like)
    per_batch = count_ops(lambda: run(warm, 8, opts=cuda_like))
    return {"images": n, "batch_size": batch, "seconds": seconds,
            "images_per_s": n / seconds,
            "full_table_s": seconds * TABLE_IMAGES / n,
            "extrapolated": n != TABLE_IMAGES,
            "per_epsilon_calls": {"seconds": per_eps, "full_table_s": per_eps * TABLE_IMAGES / n},
            "unfused": {"seconds": unfused, "full_table_s": unfused * TABLE_IMAGES / n},
            "passes_per_image": table_passes(),
            "op_counts_per_batch": per_batch}


def add_table_floor(table: dict, attack_res: dict) -> None:
    """The table's floor: its gradient passes at the measured per-image floor pass time
    (figure 2's fused floor of ``step_fgsm``)."""
    per_image_pass = attack_res["step_fgsm"]["floor_fused_s"] / attack_res["step_fgsm"]["batch"]
    passes = table["passes_per_image"]
    table["floor_grad_passes_s"] = {
        "as_run": TABLE_IMAGES * passes["grad_passes_as_run"] * per_image_pass,
        "minimum": TABLE_IMAGES * passes["grad_passes_minimum"] * per_image_pass}


def project_h100(training: dict, table: dict) -> dict:
    """Seconds on an H100 from FLOP and kernel counts (projections, not measurements).

    ``eager``: the host issues one launch per kernel-running ATen op and the GPU overlaps
    with it, so the time is ``max(FLOP time, kernels x host cost)``.  ``graphed`` (CUDA
    graphs / ``torch.compile(mode="reduce-overhead")``): the host cost is gone and each
    kernel costs a small fixed GPU time on top of its FLOPs.
    """
    flops_s = H100["bf16_dense_peak_flops"] * H100["sustained_fraction"]
    eager_k, graphed_k = H100["eager_host_s_per_kernel"], H100["graphed_s_per_kernel"]
    passes = 1 + H100["backward_over_forward"]  # forward + backward, in forwards

    def times(flops: float, kernels: float) -> dict:
        return {"flop_term_s": flops / flops_s, "kernels": kernels,
                "eager_s": max(flops / flops_s, kernels * eager_k),
                "graphed_s": flops / flops_s + kernels * graphed_k}

    out: dict = {"assumptions": dict(H100), "sustained_flops": flops_s}
    for recipe, res in training.items():
        fwd = res["forward_macs_per_image"] * H100["flops_per_mac"]
        clean_it, adv_it = RECIPES[recipe]
        clean_flops = 128 * passes * fwd
        adv_flops = (128 + 64) * passes * fwd  # 128 training passes + 64 attack passes
        k_clean = res["op_counts"]["clean"]["kernels"]
        k_adv = res["op_counts"]["adversarial"]["kernels"]
        out[f"{recipe}_recipe"] = {
            **times(clean_it * clean_flops + adv_it * adv_flops,
                    clean_it * k_clean + adv_it * k_adv),
            "clean_iteration": times(clean_flops, k_clean),
            "adversarial_iteration": times(adv_flops, k_adv)}
    fwd = training["n18_cifar10"]["forward_macs_per_image"] * H100["flops_per_mac"]
    p = table["passes_per_image"]
    flops = TABLE_IMAGES * fwd * (p["grad_passes_as_run"] * passes + p["forward_passes"])
    batches = math.ceil(TABLE_IMAGES / TABLE_BATCH)
    out["whitebox_table"] = times(flops, batches * table["op_counts_per_batch"]["kernels"])
    return out
