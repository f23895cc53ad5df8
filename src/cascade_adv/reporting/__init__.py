"""Reporting: the papers' table layouts, figures and the HTML report, built from the results
store (the result tables themselves are :mod:`cascade_adv.results`, re-exported here)."""

from cascade_adv.results import CLEAN, KEY_COLUMNS, ROW_KEYS, WHITEBOX, ResultTable

__all__ = ["CLEAN", "KEY_COLUMNS", "ROW_KEYS", "WHITEBOX", "ResultTable"]
