"""The attack x epsilon engine: the rows of its users on fixed seeds, as stored before it
existed (tests/engine_golden.py)."""

from __future__ import annotations

import engine_golden


def test_rows_equal_the_stored_ones():
    """evaluate_whitebox, softmax_argument and gradient_correlation on two models of
    digits (the cases of tests/engine_golden.py): the white-box accuracies (counts)
    exactly, the analyses' logits and correlations within 1e-6 relative."""
    diff = engine_golden.differences(engine_golden.stored(), engine_golden.compute())
    assert not diff, "\n".join(diff[:20])
