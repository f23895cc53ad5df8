"""The papers' analyses of trained models (N18 section 4 and appendix A, K17 section 4).

* :func:`softmax_argument` - N18 figures 4 and 6: the argument to the softmax (logits)
  of the true class and the mean of the false classes vs. epsilon.
* :func:`gradient_correlation` - N18 figure 5: Pearson's correlation between the
  input gradients w.r.t. clean and adversarial images vs. epsilon.

Every analysis returns a :class:`~cascade_adv.reporting.ResultTable` in the row format
of ``docs/results-schema.md``.
"""

from cascade_adv.analysis._common import choose_images
from cascade_adv.analysis.gradients import DEFAULT_PAIRS, gradient_correlation, pearson
from cascade_adv.analysis.softmax import softmax_argument

__all__ = [
    "DEFAULT_PAIRS",
    "choose_images",
    "gradient_correlation",
    "pearson",
    "softmax_argument",
]
