"""Where and how each leg of a training run ran: one JSON line per session in the run's
``legs.jsonl``.

Two trainings of one seed are not bit-identical across machines, torch builds or thread
counts, so a run resumed across sessions records, for every leg, the iteration it
started at, the time, the torch version, the device, the CPU or GPU model, the torch
thread count and the number of processes.  Reports show it beside the numbers
(:func:`read_legs`, :func:`describe_legs`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cascade_adv.io import processor_name, read_json_lines

#: The file in a run folder that holds one line per training leg.
LEGS_FILE = "legs.jsonl"


def leg_record(iteration: int, device: torch.device, world: int = 1) -> dict[str, Any]:
    """This process's record of a leg starting at ``iteration`` on ``device``."""
    device = torch.device(device)
    model = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else processor_name())
    return {"iteration": int(iteration),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": str(device), "model": model,
            "threads": torch.get_num_threads(), "processes": int(world)}


def record_leg(run_dir: str | Path, iteration: int, device: torch.device,
               world: int = 1) -> None:
    """Append the record of a leg starting at ``iteration`` to ``run_dir/legs.jsonl``
    (one line, appended: a crash leaves the earlier lines whole)."""
    with open(Path(run_dir) / LEGS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(leg_record(iteration, device, world)) + "\n")


def read_legs(run_dir: str | Path) -> list[dict[str, Any]]:
    """The legs a run recorded (an unreadable line is skipped; none: ``[]``)."""
    return [leg for leg in read_json_lines(Path(run_dir) / LEGS_FILE)
            if isinstance(leg.get("iteration"), int)]


def describe_legs(legs: list[dict[str, Any]]) -> str:
    """``"from iteration 0: torch 2.13.0+cpu, cpu (AMD EPYC 7B13), 1 thread; from
    iteration 4000: ..."``; ``""`` for none."""
    def one(leg: dict[str, Any]) -> str:
        threads = leg.get("threads")
        procs = leg.get("processes", 1)
        return (f"from iteration {leg['iteration']}: torch {leg.get('torch', '?')}, "
                f"{leg.get('device', '?')} ({leg.get('model', '?')}), {threads} thread"
                f"{'' if threads == 1 else 's'}" + (f" x {procs} processes" if procs != 1
                                                     else ""))
    return "; ".join(one(leg) for leg in legs)
