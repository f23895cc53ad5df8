"""Evaluation: white-box tables, black-box transfer matrices and crafted adversarial sets
(the results store, tables and saved-set format live in :mod:`cascade_adv.results` and are
re-exported here).

>>> from cascade_adv.evaluation import evaluate_whitebox, ResultsStore
>>> table = evaluate_whitebox(model, test_set, ["step_ll", "iter_fgsm"], [0, 2, 4, 8, 16])
>>> print(table.to_markdown())
>>> for part in attack_eps(model, x, y, [2, 4], "iter_fgsm"):   # the attack x eps engine
...     part.x_adv                                           # [2 * len(x), ...], eps-major
>>> result = audit(model, x, y, [16, 32], version="quick")   # the robustness audit
>>> checks = diagnose(model, x, y, [16, 32], audit_result=result)   # gradient masking
>>> print(attack_failure_indicators(model, x, y, 32).to_markdown())  # why attacks fail
"""

from cascade_adv.evaluation.advset import craft_adversarial_set
from cascade_adv.evaluation.audit import AuditRecord, AuditResult, AuditRun, Workers, audit
from cascade_adv.evaluation.blackbox import check_pair, evaluate_transfer, rates_from_ranks
from cascade_adv.evaluation.diagnostics import Diagnostic, diagnose, format_diagnostics
from cascade_adv.evaluation.engine import RowOutcome, Stacked, attack_eps, attack_rows
from cascade_adv.evaluation.indicators import IndicatorResult, attack_failure_indicators
from cascade_adv.evaluation.sanity import SanityWarning, check_results, format_warnings
from cascade_adv.evaluation.stats import aggregate_seeds, format_mean_std, mean_std
from cascade_adv.evaluation.transfer import transfer_matrix
from cascade_adv.evaluation.whitebox import (
    count_correct,
    evaluate_whitebox,
    prepare_images,
    true_class_rank,
)
from cascade_adv.results import (
    SCHEMA_VERSION,
    AdversarialSet,
    ModelInfo,
    ResultsStore,
    ResultTable,
    load_adversarial_set,
)

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialSet",
    "AuditRecord",
    "AuditResult",
    "AuditRun",
    "Diagnostic",
    "IndicatorResult",
    "ModelInfo",
    "ResultTable",
    "ResultsStore",
    "RowOutcome",
    "SanityWarning",
    "Stacked",
    "Workers",
    "aggregate_seeds",
    "attack_eps",
    "attack_failure_indicators",
    "attack_rows",
    "audit",
    "check_pair",
    "check_results",
    "count_correct",
    "craft_adversarial_set",
    "diagnose",
    "evaluate_transfer",
    "evaluate_whitebox",
    "format_diagnostics",
    "format_mean_std",
    "format_warnings",
    "load_adversarial_set",
    "mean_std",
    "prepare_images",
    "rates_from_ranks",
    "transfer_matrix",
    "true_class_rank",
]
