"""The papers' analyses of trained models (N18 section 4 and appendix A, K17 section 4).

* :func:`softmax_argument` - N18 figures 4 and 6: the argument to the softmax (logits)
  of the true class and the mean of the false classes vs. epsilon; also (opt-in) at the
  iter_FGSM and APGD-CE images of each epsilon.
* :func:`gradient_correlation` - N18 figure 5: Pearson's correlation between the
  input gradients w.r.t. clean and adversarial images vs. epsilon.
* :mod:`cascade_adv.analysis.sweeps` - analyses that train a family of networks:
  lambda2 (N18 figure 3), model capacity (K17 figures 1, 4), activation functions
  (K17 table 7), label leaking (K17 table 3) and multiple seeds (N18 table 3),
  all through :func:`run_variants`.

Every analysis returns a :class:`~cascade_adv.reporting.ResultTable` in the row format
of ``docs/results-schema.md``.  The first two attack along their directions on the
attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`), with fusion an argument.
"""

from cascade_adv.analysis._common import choose_images
from cascade_adv.analysis.gradients import DEFAULT_PAIRS, gradient_correlation, pearson
from cascade_adv.analysis.softmax import softmax_argument
from cascade_adv.analysis.sweeps import (
    Variant,
    activation_variants,
    capacity_variants,
    label_leaking_table,
    label_leaking_variants,
    lambda2_variants,
    run_variants,
    seed_variants,
)

__all__ = [
    "DEFAULT_PAIRS",
    "Variant",
    "activation_variants",
    "capacity_variants",
    "choose_images",
    "gradient_correlation",
    "label_leaking_table",
    "label_leaking_variants",
    "lambda2_variants",
    "pearson",
    "run_variants",
    "seed_variants",
    "softmax_argument",
]
