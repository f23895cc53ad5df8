"""Results: result rows and tables, the SQLite results store, saved adversarial sets and
the published numbers of both papers.  Below training, evaluation, analysis and
reporting, which all read or write these (docs/design.md).

>>> from cascade_adv.results import ResultsStore
>>> with ResultsStore("results/results.db") as store:
...     print(store.query(metric="top1").to_markdown())
"""

from cascade_adv.results.advsets import AdversarialSet, load_adversarial_set
from cascade_adv.results.store import SCHEMA_VERSION, ModelInfo, ResultsStore
from cascade_adv.results.tables import CLEAN, KEY_COLUMNS, ROW_KEYS, WHITEBOX, ResultTable

__all__ = [
    "CLEAN",
    "KEY_COLUMNS",
    "ROW_KEYS",
    "SCHEMA_VERSION",
    "WHITEBOX",
    "AdversarialSet",
    "ModelInfo",
    "ResultTable",
    "ResultsStore",
    "load_adversarial_set",
]
