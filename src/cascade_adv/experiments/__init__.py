"""Experiments: recipes that train, evaluate and tabulate in one call."""

from cascade_adv.experiments.quickstart import QuickstartResult, quickstart

__all__ = ["QuickstartResult", "quickstart"]
