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
misread.  :func:`check_store_path` reads a store's integrity (``PRAGMA quick_check``)
and its tables' columns before a command starts, so a damaged or foreign SQLite file
is refused before any work.

Computed rows are never thrown away: when the store cannot be written (held locked
past the busy timeout, a full disk, a read-only folder), :meth:`ResultsStore.save`
and :func:`store_rows` keep the rows and model records in a JSON-lines file beside
the store (else in the current or the temporary folder) and raise
:class:`~cascade_adv.errors.StoreWriteError` naming it;
``cascade-adv store import FILE`` (:func:`import_rows`) puts them in later.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cascade_adv.errors import (
    CascadeAdvError,
    InvalidArgument,
    StoreConflict,
    StoreWriteError,
    echo,
    one_line,
)
from cascade_adv.results.tables import (
    KEY_COLUMNS,
    MAX_HASH,
    MAX_TEXT,
    ROW_KEYS,
    ResultTable,
    check_text,
    normalize_row,
)

if TYPE_CHECKING:
    from typing_extensions import Self

#: Version of the schema written by this cascade-adv (``PRAGMA user_version``).
#: 1: ``results``; 2: adds ``models`` (a version-1 store is upgraded in place on open).
SCHEMA_VERSION = 2

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Seconds a writer waits for another one's lock before the rows go to a pending file.
BUSY_TIMEOUT = 30.0
#: First line of a pending-rows file (:func:`import_rows`).
PENDING_FORMAT = "cascade-adv/pending-rows/1"
#: What :func:`import_rows` does with an entry that would replace one of another model
#: hash or a newer one (:meth:`ResultsStore.merge`).
ON_CONFLICT = ("error", "keep", "replace")

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
_MODEL_COLUMNS = ("name", "model_hash", "dataset", "init", "experiment", "params", "created")
_REGISTER = (
    f"INSERT INTO models ({', '.join(_MODEL_COLUMNS)}) VALUES "
    f"({', '.join('?' * len(_MODEL_COLUMNS))}) ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _MODEL_COLUMNS if c != "name")
)
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


def _model_record(name: str, *, model_hash: str = "", dataset: str = "", init: str = "",
                  experiment: str = "", params: Mapping[str, Any] | str | None = None) -> dict:
    """A model's row of ``models`` (less ``created``), its parameters as JSON text; text
    fields that are not text (or too long, or an empty name) raise one line."""
    fields = {"name": name, "model_hash": model_hash, "dataset": dataset, "init": init,
              "experiment": experiment}
    for key, value in fields.items():
        check_text(value, f"model record's {key!r}", required=key == "name",
                   limit=MAX_HASH if key == "model_hash" else MAX_TEXT)
    try:
        if isinstance(params, str):  # as a pending file keeps them
            params = json.loads(params)
        if not isinstance(params, Mapping) and params is not None:
            raise TypeError(f"{type(params).__name__}, not an object")
        params = json.dumps(dict(params or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CascadeAdvError(f"parameters of model {name!r} are not JSON: {exc}") from None
    return {**fields, "params": params}


def check_store_path(path: str | os.PathLike) -> Path:
    """Raise :class:`CascadeAdvError` (before any work) unless ``path`` can hold a
    results store: a writable file path, and an existing file an undamaged SQLite
    database (``PRAGMA quick_check``) that is empty or has this cascade-adv's tables.
    Read with a read-only connection: nothing is written."""
    from cascade_adv.io import check_writable_file

    p = check_writable_file(path, "results store")
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise CascadeAdvError(f"results store {p} is not an SQLite database; "
                                  "give another --results path (e.g. results.sqlite)")
        if head:
            try:
                con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True,
                                      timeout=BUSY_TIMEOUT)
                try:
                    check = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
                    if check != ["ok"]:
                        raise CascadeAdvError(
                            f"results store {p} is damaged ({one_line('; '.join(check))[:200]}"
                            "); restore it from a backup or give another --results path")
                    _check_schema(con, p)
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                raise CascadeAdvError(f"cannot open results store {p}: {e}; give another "
                                      "--results path") from None
    return p


def _check_schema(conn: sqlite3.Connection, path: object) -> int:
    """The store's schema version, after checking that its tables are this cascade-adv's
    (a newer schema, another program's tables or missing columns raise one line)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CascadeAdvError(
            f"results store {path} was written by a newer cascade-adv (schema {version} > "
            f"{SCHEMA_VERSION}); upgrade cascade-adv or use another --results path")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if version == 0:
        if tables:
            raise CascadeAdvError(
                f"{path} is an SQLite database but not a cascade-adv results store (it has "
                f"tables {', '.join(tables)}); give another --results path")
        return version
    expected = {"results": set(_COLUMNS), **({"models": set(_MODEL_COLUMNS)} if version >= 2
                                            else {})}
    for table, columns in expected.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            raise CascadeAdvError(
                f"{path} is an SQLite database but not a cascade-adv results store (schema "
                f"{version} without the columns of table {table!r}); give another --results "
                "path")
    return version


class ResultsStore:
    """Evaluation rows in the SQLite file ``path`` (created if missing).

    Use as a context manager, or call :meth:`close`.  ``":memory:"`` gives a
    throw-away in-memory store.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float | None = None) -> None:
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
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT if timeout is None
                                         else timeout, isolation_level=None)
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
        if _check_schema(conn, self.path) == SCHEMA_VERSION:
            return
        with self._transaction():
            version = _check_schema(conn, self.path)  # re-read under the lock
            if version == 0:
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
            # SQLite has already rolled back after some errors (a full disk): a second
            # ROLLBACK would only add "cannot rollback - no transaction is active"
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self._connection.execute("PRAGMA user_version").fetchone()[0])

    # --- writing ----------------------------------------------------------------------------

    def save(self, rows: ResultTable | Iterable[Mapping[str, Any]] = (),
             models: Iterable[Mapping[str, Any]] = ()) -> int:
        """Register ``models`` (keyword arguments of :meth:`register_model`) and insert
        ``rows``, replacing those with the same key, in one transaction; returns the row
        count.  When the store cannot be written (locked past the busy timeout, a full
        disk), the rows and models are kept in a pending file and
        :class:`~cascade_adv.errors.StoreWriteError` names it (:func:`import_rows`)."""
        rows, models = _checked(rows, models)
        try:
            with self._transaction() as conn:
                _write(conn, rows, models, _utc_now())
        except sqlite3.Error as exc:
            raise keep_rows(self.path, rows, models, exc) from None
        return len(rows)

    def merge(self, rows: Iterable[Mapping[str, Any]], models: Iterable[Mapping[str, Any]],
              created: str, on_conflict: str = "error") -> tuple[int, int, list[str]]:
        """Write ``rows`` and ``models`` computed at ``created`` (UTC ISO time, kept as
        their ``created``) in one transaction, except where one would replace a row or
        model record of another model hash or a newer one: a conflict.  ``on_conflict``:
        ``"error"`` raises :class:`~cascade_adv.errors.StoreConflict` (one line per
        conflict) and writes nothing; ``"keep"`` keeps the store's entries and writes the
        rest; ``"replace"`` writes everything.  Returns the counts of rows and models
        written and the conflict lines.  SQLite errors propagate (nothing written)."""
        if on_conflict not in ON_CONFLICT:
            raise InvalidArgument(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got "
                                  f"{on_conflict!r}")
        rows, models = _checked(rows, models)
        when = parse_time(created, "the rows' created time")
        with self._transaction() as conn:
            bad_rows = {i: why for i, r in enumerate(rows)
                        if (why := _conflict(conn.execute(_ROW_AT, [r[c] for c in KEY_COLUMNS])
                                             .fetchone(), r["model_hash"], when))}
            bad_models = {i: why for i, m in enumerate(models)
                          if (why := _conflict(conn.execute(_MODEL_AT, (m["name"],)).fetchone(),
                                               m["model_hash"], when))}
            lines = ([f"model record {models[i]['name']!r}: {why}" for i, why in bad_models.items()]
                     + [f"row {_describe(rows[i])}: {why}" for i, why in bad_rows.items()])
            if lines and on_conflict == "error":
                raise StoreConflict(
                    f"{len(lines)} entries would replace the store's entries of another model "
                    "hash or newer ones; nothing was imported; choose with --on-conflict keep (keep the "
                    "store's, import the rest) or replace (on_conflict= in Python)", lines)
            if on_conflict == "keep":
                rows = [r for i, r in enumerate(rows) if i not in bad_rows]
                models = [m for i, m in enumerate(models) if i not in bad_models]
            _write(conn, rows, models, when.isoformat(timespec="seconds"))
        return len(rows), len(models), lines

    def upsert(self, rows: ResultTable | Iterable[Mapping[str, Any]]) -> int:
        """Insert rows, replacing those with the same key; one transaction.  Returns the
        count (see :meth:`save`: rows that cannot be stored are kept in a file)."""
        return self.save(rows)

    def register_model(self, name: str, *, model_hash: str = "", dataset: str = "",
                       init: str = "", experiment: str = "",
                       params: Mapping[str, Any] | None = None) -> None:
        """Record (or replace) what is known about model ``name``: its weights hash,
        dataset, initialisation (see :func:`cascade_adv.models.read_model_init`), the
        experiment it belongs to and that experiment's parameters (JSON-serialisable)."""
        self.save((), [{"name": name, "model_hash": model_hash, "dataset": dataset, "init": init,
                            "experiment": experiment, "params": params}])

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


_ROW_AT = ("SELECT model_hash, created FROM results WHERE "
           + " AND ".join(f"{c} = ?" for c in KEY_COLUMNS))
_MODEL_AT = "SELECT model_hash, created FROM models WHERE name = ?"


def parse_time(text: object, what: str) -> datetime:
    """An ISO time with its UTC offset (as the store writes ``created``); else one line."""
    try:
        when = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None:
        raise CascadeAdvError(f"{what} must be an ISO time with its UTC offset (e.g. "
                              f"2026-01-01T12:00:00+00:00), got {echo(text)}")
    return when.astimezone(timezone.utc)


def _checked(rows: Iterable[Mapping[str, Any]],
             models: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    return [normalize_row(r) for r in rows], [_model_record(**m) for m in models]


def _write(conn: sqlite3.Connection, rows: Sequence[dict], models: Sequence[dict],
           created: str) -> None:
    for m in models:
        conn.execute(_REGISTER, (*m.values(), created))
    conn.executemany(_UPSERT, [tuple(r[c] for c in ROW_KEYS) + (created,) for r in rows])


def _conflict(stored: tuple[str, str] | None, model_hash: str, when: datetime) -> str:
    """Why an entry computed at ``when`` for ``model_hash`` must not replace the
    ``stored`` one (its hash and created time), or "" when it may."""
    if stored is None:
        return ""
    old_hash, old_created = stored
    if old_hash != model_hash:
        return (f"the store's is of model hash {old_hash[:16] or '(none)'}, the file's of "
                f"{model_hash[:16] or '(none)'}")
    try:
        newer = parse_time(old_created, "") > when
    except CascadeAdvError:
        newer = True  # an unreadable time: never assume it is older
    return f"the store's is newer ({old_created} > {when.isoformat()})" if newer else ""


def _describe(row: Mapping[str, Any]) -> str:
    return (f"{row['model']} {row['attack']} eps {row['eps']:g} ({row['source']}, "
            f"{row['metric']}, {row['dataset'] or '-'} {row['split'] or '-'})")


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


# --- rows that could not be stored --------------------------------------------------------


def store_rows(path: str | os.PathLike, rows: ResultTable | Iterable[Mapping[str, Any]],
               models: Iterable[Mapping[str, Any]] = (), *,
               timeout: float | None = None) -> int:
    """Open the store at ``path``, register ``models`` and upsert ``rows`` in one
    transaction (:meth:`ResultsStore.save`).  If the store cannot be opened or written
    (locked past ``timeout``, a full disk, a read-only folder), the rows and models are
    kept in a pending file and :class:`~cascade_adv.errors.StoreWriteError` says how to
    import them: computed rows are never thrown away."""
    rows, models = list(rows), list(models)
    try:
        store = ResultsStore(path, timeout=timeout)
    except (CascadeAdvError, OSError) as exc:
        raise keep_rows(path, rows, models, exc) from None
    with store:
        return store.save(rows, models)


def keep_rows(store: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              models: Sequence[Mapping[str, Any]], reason: BaseException) -> StoreWriteError:
    """Write ``rows`` and ``models`` that ``store`` could not take to a pending file
    (JSON lines: a header naming the store, then one ``{"model": ...}`` or ``{"row": ...}``
    per line) beside the store, else in the current folder, else in the temporary
    folder; return the :class:`~cascade_adv.errors.StoreWriteError` to raise."""
    from cascade_adv.io import atomic_write_text

    store = Path(store)
    why = one_line(reason)
    if isinstance(reason, sqlite3.OperationalError) and "locked" in why:
        why = f"{why}: another process held it past the {BUSY_TIMEOUT:g} s timeout"
    lines = [json.dumps({"format": PENDING_FORMAT, "store": str(store.absolute()),
                         "reason": why, "created": _utc_now()})]
    lines += [json.dumps({"model": m}, sort_keys=True) for m in models]
    lines += [json.dumps({"row": normalize_row(r)}) for r in rows]
    text = "\n".join(lines) + "\n"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{store.name}.unsaved-{stamp}-{os.getpid()}.jsonl"
    what = f"{len(rows)} rows" + (f" and {len(models)} model records" if models else "")
    for folder in dict.fromkeys((store.absolute().parent, Path.cwd(),
                                 Path(tempfile.gettempdir()))):
        try:
            atomic_write_text(folder / name, text)
        except (OSError, CascadeAdvError):
            continue
        return StoreWriteError(
            f"results store {store} could not be written ({why}); the {what} are kept in "
            f"{folder / name}: import them with 'cascade-adv store import {folder / name}'")
    return StoreWriteError(
        f"results store {store} could not be written ({why}), nor could the {what} be kept "
        f"in any folder (about {len(text) // 1024 + 1} KB needed); free some space and run "
        "the command again")


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_rows` did: the store, the rows and model records written, and
    one line per conflicting entry that was kept as the store had it (``on_conflict``
    ``"keep"``) or replaced (``"replace"``)."""

    store: Path
    rows: int
    models: int
    conflicts: list[str] = field(default_factory=list)


def read_pending(file: str | os.PathLike) -> tuple[dict, list[dict], list[dict]]:
    """The header, rows and model records of a pending file (:func:`keep_rows`), each
    checked as a freshly computed one is (:func:`~cascade_adv.results.tables.normalize_row`)
    and the header's ``store`` and ``created``; a row or model twice is refused.  Anything
    off raises :class:`CascadeAdvError` naming the line and the field."""
    file = Path(file)
    if not file.is_file():
        raise CascadeAdvError(f"no pending-rows file at {file}; pass the file that the failed "
                              "command named")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
        parsed = [(i, json.loads(ln)) for i, ln in enumerate(lines, 1) if ln.strip()]
    except (OSError, ValueError) as exc:
        raise CascadeAdvError(f"cannot read pending rows {file} ({one_line(exc)}); pass a "
                              "file that a failed store write named") from None
    header = parsed[0][1] if parsed and parsed[0][0] == 1 else None
    if not isinstance(header, dict) or header.get("format") != PENDING_FORMAT:
        raise CascadeAdvError(f"{file} is not a cascade-adv pending-rows file (its first line "
                              f"must have format {PENDING_FORMAT!r})")
    rows: list[dict] = []
    models: list[dict] = []
    seen: dict[tuple, int] = {}
    for i, entry in parsed:
        try:
            if i == 1:
                _check_header(entry)
                continue
            kind, record = _pending_entry(entry)
            if kind == "row":
                record = normalize_row(record)
                key = (kind, *(record[c] for c in KEY_COLUMNS))
            else:
                record = _model_record(**record)
                key = (kind, record["name"])
            if key in seen:
                raise CascadeAdvError(f"the same {kind} as line {seen[key]} (each may appear once)")
            seen[key] = i
            (rows if kind == "row" else models).append(record)
        except (CascadeAdvError, TypeError) as exc:
            raise CascadeAdvError(f"line {i} of {file}: {one_line(exc)}; nothing was "
                                  "imported") from None
    return header, rows, models


def _check_header(header: dict) -> None:
    store = header.get("store")
    if not isinstance(store, str) or not store.strip():
        raise CascadeAdvError(f"the header's 'store' must be the store's path, got "
                              f"{echo(store)}")
    parse_time(header.get("created"), "the header's 'created'")


def _pending_entry(entry: object) -> tuple[str, dict]:
    if not (isinstance(entry, dict) and len(entry) == 1
            and next(iter(entry)) in ("row", "model")):
        raise CascadeAdvError("neither a row nor a model record")
    kind, record = next(iter(entry.items()))
    if not isinstance(record, dict):
        raise CascadeAdvError(f"the {kind} must be an object, got {echo(record)}")
    if kind == "model" and not (isinstance(record.get("name"), str) and record["name"].strip()):
        raise CascadeAdvError(f"the model record's 'name' must be a non-empty text, got "
                              f"{echo(record.get('name'))}")
    return kind, record


def import_rows(file: str | os.PathLike, store: str | os.PathLike | None = None, *,
                on_conflict: str = "error") -> ImportResult:
    """Put the rows and models of a pending file (:func:`keep_rows`) into ``store`` (by
    default the store the file names) in one transaction, each with the time it was
    computed (the file's ``created``).  An entry never silently replaces one of another
    model hash or a newer one (:meth:`ResultsStore.merge`, ``on_conflict``).  A malformed
    file raises :class:`CascadeAdvError` (one line naming the line and the field) and
    changes nothing; so does a store that cannot be written (the file stays)."""
    from cascade_adv.io import check_disjoint

    if store is not None:  # an argument that names the file itself: refused before reading
        check_disjoint([("--results", Path(store))], [("FILE", Path(file))])
    header, rows, models = read_pending(file)
    if store is None and not Path(header["store"]).is_absolute():
        raise CascadeAdvError(f"{file} names its store by a relative path "
                              f"({echo(header['store'])}); pass the store with --results")
    target = Path(store if store is not None else header["store"])
    check_disjoint([("--results", target)], [("FILE", Path(file))])
    check_store_path(target)
    try:
        with ResultsStore(target) as db:
            n_rows, n_models, conflicts = db.merge(rows, models, header["created"], on_conflict)
    except sqlite3.Error as exc:
        raise StoreWriteError(f"results store {target} could not be written ({one_line(exc)}); "
                              f"nothing was imported and {file} is kept: run the import again "
                              "later") from None
    return ImportResult(target, n_rows, n_models, conflicts)
