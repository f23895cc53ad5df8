"""Every Python code block of the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cascade_adv.models import build_model

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_readme_python_blocks_run():
    """The names a block uses without defining them are the ones its text explains: a
    model, images ``x`` in [0, 1] with labels ``y``, and a batch's ``logits``, ``labels``
    and ``k``."""
    blocks = python_blocks()
    assert len(blocks) >= 2
    torch.manual_seed(0)
    given = {
        "model": build_model({"depth": 8, "in_channels": 1, "input_size": 8}).eval(),
        "x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 3]),
        "logits": torch.randn(6, 10), "labels": torch.randint(0, 10, (6,)), "k": 2,
    }
    for block in blocks:
        namespace = dict(given)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
        if "x_adv" in namespace:
            assert namespace["x_adv"].shape == given["x"].shape
        if "loss" in namespace:
            assert torch.isfinite(namespace["loss"])
