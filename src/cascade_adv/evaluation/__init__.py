"""Evaluation: white-box tables, black-box transfer matrices, saved adversarial sets and the
SQLite results store.

>>> from cascade_adv.evaluation import evaluate_whitebox, ResultsStore
>>> table = evaluate_whitebox(model, test_set, ["step_ll", "iter_fgsm"], [0, 2, 4, 8, 16])
>>> print(table.to_markdown())
"""

from cascade_adv.evaluation.advset import (
    AdversarialSet,
    craft_adversarial_set,
    load_adversarial_set,
)
from cascade_adv.evaluation.blackbox import check_pair, evaluate_transfer, rates_from_ranks
from cascade_adv.evaluation.sanity import SanityWarning, check_results, format_warnings
from cascade_adv.evaluation.stats import aggregate_seeds, format_mean_std, mean_std
from cascade_adv.evaluation.store import SCHEMA_VERSION, ModelInfo, ResultsStore
from cascade_adv.evaluation.transfer import transfer_matrix
from cascade_adv.evaluation.whitebox import (
    count_correct,
    evaluate_whitebox,
    prepare_images,
    true_class_rank,
)
from cascade_adv.reporting.tables import ResultTable

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialSet",
    "ModelInfo",
    "ResultTable",
    "ResultsStore",
    "SanityWarning",
    "aggregate_seeds",
    "check_pair",
    "check_results",
    "count_correct",
    "craft_adversarial_set",
    "evaluate_transfer",
    "evaluate_whitebox",
    "format_mean_std",
    "format_warnings",
    "load_adversarial_set",
    "mean_std",
    "prepare_images",
    "rates_from_ranks",
    "transfer_matrix",
    "true_class_rank",
]
