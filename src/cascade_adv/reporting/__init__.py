"""Reporting: tidy result tables (Markdown / CSV / JSON) in the papers' layout."""

from cascade_adv.reporting.tables import CLEAN, KEY_COLUMNS, ROW_KEYS, WHITEBOX, ResultTable

__all__ = ["CLEAN", "KEY_COLUMNS", "ROW_KEYS", "WHITEBOX", "ResultTable"]
