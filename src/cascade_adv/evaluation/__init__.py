"""Evaluation: white-box accuracy tables, saved adversarial sets and the SQLite results store.

>>> from cascade_adv.evaluation import evaluate_whitebox, ResultsStore
>>> table = evaluate_whitebox(model, test_set, ["step_ll", "iter_fgsm"], [0, 2, 4, 8, 16])
>>> print(table.to_markdown())
"""

from cascade_adv.evaluation.advset import (
    AdversarialSet,
    craft_adversarial_set,
    load_adversarial_set,
)
from cascade_adv.evaluation.blackbox import evaluate_transfer
from cascade_adv.evaluation.store import SCHEMA_VERSION, ResultsStore
from cascade_adv.evaluation.whitebox import count_correct, evaluate_whitebox, prepare_images
from cascade_adv.reporting.tables import ResultTable

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialSet",
    "ResultTable",
    "ResultsStore",
    "count_correct",
    "craft_adversarial_set",
    "evaluate_transfer",
    "evaluate_whitebox",
    "load_adversarial_set",
    "prepare_images",
]
