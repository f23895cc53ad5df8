"""The results store: every evaluation's rows in one SQLite file.

>>> with ResultsStore("results.sqlite") as store:
...     store.upsert(evaluate_whitebox(model, test_set, ["step_ll"], [0, 2, 4, 8, 16]))
...     print(store.query(attack="step_ll", metric="top1").to_markdown())

One table, ``results``, holds the rows of :class:`~cascade_adv.reporting.ResultTable`
(``model, model_hash, dataset, split, attack, eps, source, metric, value, n``)
plus ``created`` (UTC ISO time of the write), with a UNIQUE key on
``(model, dataset, split, attack, eps, source, metric)``: evaluating the same
thing again replaces its row instead of adding a duplicate.  Each
:meth:`ResultsStore.upsert` is one transaction, so a crash never leaves half an
evaluation behind; concurrent writers wait for each other (busy timeout).

A second table, ``models``, keeps one record per model: weights hash, dataset,
initialisation, experiment and its parameters (:meth:`ResultsStore.register_model`).
Reports use it to mark black-box pairs that share their initialisation and to
group the networks of a sweep or a multi-seed experiment.

The schema version lives in ``PRAGMA user_version``; an older store is upgraded
in place, a store written by a newer cascade-adv is refused rather than silently
misread.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cascade_adv.errors import CascadeAdvError
from cascade_adv.results.tables import KEY_COLUMNS, ROW_KEYS, ResultTable, normalize_row

if TYPE_CHECKING:
    from typing_extensions import Self

#: Version of the schema written by this cascade-adv (``PRAGMA user_version``).
#: 1: ``results``; 2: adds ``models`` (a version-1 store is upgraded in place on open).
SCHEMA_VERSION = 2

_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = f"""
CREATE TABLE results (
    model      TEXT    NOT NULL,
    model_hash TEXT    NOT NULL DEFAULT '',
    dataset    TEXT    NOT NULL,
    split      TEXT    NOT NULL,
    attack     TEXT    NOT NULL,
    eps        REAL    NOT NULL,
    source     TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    value      REAL    NOT NULL,
    n          INTEGER NOT NULL,
    created    TEXT    NOT NULL,
    UNIQUE ({", ".join(KEY_COLUMNS)})
)
"""

_MODELS_SCHEMA = """
CREATE TABLE models (
    name       TEXT NOT NULL PRIMARY KEY,
    model_hash TEXT NOT NULL DEFAULT '',
    dataset    TEXT NOT NULL DEFAULT '',
    init       TEXT NOT NULL DEFAULT '',
    experiment TEXT NOT NULL DEFAULT '',
    params     TEXT NOT NULL DEFAULT '{}',
    created    TEXT NOT NULL
)
"""

_COLUMNS = ROW_KEYS + ("created",)
_UPSERT = (
    f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in KEY_COLUMNS)
)


@dataclass(frozen=True)
class ModelInfo:
    """A model's record in the store (see :meth:`ResultsStore.register_model`)."""

    name: str
    model_hash: str
    dataset: str
    init: str
    experiment: str
    params: dict = field(default_factory=dict)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_store_path(path: str | os.PathLike) -> Path:
    """Raise :class:`CascadeAdvError` (before any work) unless ``path`` can hold a
    results store: a writable file path, and an existing file an SQLite database."""
    from cascade_adv.io import check_writable_file

    p = check_writable_file(path, "results store")
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise CascadeAdvError(f"results store {p} is not an SQLite database; "
                                  "give another --results path (e.g. results.sqlite)")
        if head:  # the schema checks of opening it, read-only (nothing is written)
            try:
                con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
                try:
                    version = con.execute("PRAGMA user_version").fetchone()[0]
                    tables = [r[0] for r in con.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'")]
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                raise CascadeAdvError(f"cannot open results store {p}: {e}; give another "
                                      "--results path") from None
            if version > SCHEMA_VERSION:
                raise CascadeAdvError(
                    f"results store {p} was written by a newer cascade-adv (schema {version} > "
                    f"{SCHEMA_VERSION}); upgrade cascade-adv or use another --results path")
            if version == 0 and tables:
                raise CascadeAdvError(
                    f"{p} is an SQLite database but not a cascade-adv results store (it has "
                    f"tables {', '.join(tables)}); give another --results path")
    return p


class ResultsStore:
    """Evaluation rows in the SQLite file ``path`` (created if missing).

    Use as a context manager, or call :meth:`close`.  ``":memory:"`` gives a
    throw-away in-memory store.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        if self.path != ":memory:":
            p = Path(path)
            if p.is_dir():
                raise CascadeAdvError(
                    f"results store {p} is a directory; give a file path such as {p}/results.sqlite"
                )
            if p.exists():
                with open(p, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
                if head and head != _SQLITE_MAGIC:
                    raise CascadeAdvError(
                        f"results store {p} is not an SQLite database; "
                        "give another --results path (e.g. results.sqlite)"
                    )
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: transactions are explicit (_transaction).
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._open()
        except sqlite3.DatabaseError as e:
            self.close()
            raise CascadeAdvError(
                f"cannot open results store {self.path}: {e}; give another --results path"
            ) from None
        except BaseException:
            self.close()
            raise

    # --- schema ---------------------------------------------------------------------------

    def _open(self) -> None:
        conn = self._connection
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CascadeAdvError(
                f"results store {self.path} was written by a newer cascade-adv (schema "
                f"{version} > {SCHEMA_VERSION}); upgrade cascade-adv or use another --results path"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction():
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under lock
            if version == 0:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")]
                if tables:
                    raise CascadeAdvError(
                        f"{self.path} is an SQLite database but not a cascade-adv results store "
                        f"(it has tables {', '.join(tables)}); give another --results path"
                    )
                conn.execute(_SCHEMA)
            if version < 2:
                conn.execute(_MODELS_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CascadeAdvError(f"results store {self.path} is closed; open it again")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the database's write lock at once (``BEGIN
        IMMEDIATE``): committed when the block ends, rolled back if it raises."""
        conn = self._connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self._connection.execute("PRAGMA user_version").fetchone()[0])

    # --- writing ----------------------------------------------------------------------------

    def upsert(self, rows: ResultTable | Iterable[Mapping[str, Any]]) -> int:
        """Insert rows, replacing those with the same key; one transaction.  Returns the count."""
        created = _utc_now()
        values = [
            tuple(r[c] for c in ROW_KEYS) + (created,)
            for r in (normalize_row(row) for row in rows)
        ]
        with self._transaction() as conn:
            conn.executemany(_UPSERT, values)
        return len(values)

    def register_model(self, name: str, *, model_hash: str = "", dataset: str = "",
                       init: str = "", experiment: str = "",
                       params: Mapping[str, Any] | None = None) -> None:
        """Record (or replace) what is known about model ``name``: its weights hash,
        dataset, initialisation (see :func:`cascade_adv.models.read_model_init`), the
        experiment it belongs to and that experiment's parameters (JSON-serialisable)."""
        try:
            params_json = json.dumps(dict(params or {}), sort_keys=True)
        except TypeError as exc:
            raise CascadeAdvError(f"parameters of model {name!r} are not JSON: {exc}") from None
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO models (name, model_hash, dataset, init, experiment, params, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " model_hash = excluded.model_hash, dataset = excluded.dataset,"
                " init = excluded.init, experiment = excluded.experiment,"
                " params = excluded.params, created = excluded.created",
                (str(name), model_hash, dataset, init, experiment, params_json, _utc_now()),
            )

    def models(self, experiment: str | None = None) -> list[ModelInfo]:
        """The registered models (of one ``experiment`` if given), in registration order."""
        sql = "SELECT name, model_hash, dataset, init, experiment, params FROM models"
        args: tuple = ()
        if experiment is not None:
            sql, args = sql + " WHERE experiment = ?", (experiment,)
        rows = self._connection.execute(sql + " ORDER BY rowid", args).fetchall()
        return [ModelInfo(*r[:5], params=json.loads(r[5])) for r in rows]

    def same_init(self, a: str, b: str) -> bool:
        """True when models ``a`` and ``b`` are registered with the same, known init."""
        info = {m.name: m.init for m in self.models()}
        return bool(info.get(a)) and info.get(a) == info.get(b)

    def delete(self, **filters: Any) -> int:
        """Delete the rows matching ``filters`` (see :meth:`query`); returns the count."""
        where, params = _where(filters)
        with self._transaction() as conn:
            count = conn.execute(f"DELETE FROM results{where}", params).rowcount
        return int(count)

    # --- reading ----------------------------------------------------------------------------

    def query(self, **filters: Any) -> ResultTable:
        """Rows whose columns equal the given values, in insertion order.

        A list, tuple or set means "any of": ``query(model="pivot", eps=[0, 16])``.
        """
        where, params = _where(filters)
        cur = self._connection.execute(
            f"SELECT {', '.join(ROW_KEYS)} FROM results{where} ORDER BY rowid", params
        )
        return ResultTable(dict(zip(ROW_KEYS, r)) for r in cur)

    def __len__(self) -> int:
        return int(self._connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{len(self)} rows"
        return f"ResultsStore({self.path!r}, {state})"


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        if key not in ROW_KEYS:
            raise CascadeAdvError(
                f"cannot filter results on {key!r}; the columns are: {', '.join(ROW_KEYS)}"
            )
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if key in ("eps", "value"):
            values = [float(v) for v in values]
        elif key == "n":
            values = [int(v) for v in values]
        if not values:
            clauses.append("0")
        elif len(values) == 1:
            clauses.append(f"{key} = ?")
        else:
            clauses.append(f"{key} IN ({', '.join('?' * len(values))})")
        params.extend(values)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
