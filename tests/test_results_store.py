"""ResultsStore: upsert without duplicates, filters, schema version, foreign files."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation import SCHEMA_VERSION, ResultsStore
from cascade_adv.reporting import ResultTable


def rows(value: float = 90.0, model: str = "pivot") -> list[dict]:
    out = []
    for attack, eps in [("clean", 0), ("step_ll", 2), ("step_ll", 16), ("iter_fgsm", 16)]:
        for metric in ("top1", "top5"):
            out.append({"model": model, "model_hash": "abc", "dataset": "cifar10",
                        "split": "test", "attack": attack, "eps": eps, "source": "whitebox",
                        "metric": metric, "value": value + eps / 4, "n": 10000})
    return out


def test_upsert_replaces_instead_of_duplicating(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.sqlite"
    with ResultsStore(path) as store:
        assert store.upsert(ResultTable(rows(90.0))) == 8
        store.upsert(rows(50.0))  # same keys, new values
        assert len(store) == 8
        assert store.query(attack="clean", metric="top1").rows[0]["value"] == 50.0
    with ResultsStore(path) as store:  # persisted, reopened
        assert len(store) == 8
        assert store.schema_version == SCHEMA_VERSION
    con = sqlite3.connect(path)
    created = con.execute("SELECT created FROM results").fetchone()[0]
    con.close()
    assert datetime.fromisoformat(created).utcoffset() == timezone.utc.utcoffset(None)


def test_query_filters(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.upsert(rows(90.0, "pivot") + rows(80.0, "baseline"))
        assert len(store.query()) == 16
        got = store.query(model="baseline", metric="top1", eps=16)
        assert [(r["attack"], r["value"]) for r in got.rows] == [("step_ll", 84.0),
                                                                 ("iter_fgsm", 84.0)]
        assert len(store.query(attack=["clean", "iter_fgsm"], metric="top5")) == 4
        assert len(store.query(model="nobody")) == 0
        assert store.query(model="pivot") == ResultTable(rows(90.0, "pivot"))
        with pytest.raises(CascadeAdvError, match="'colour'"):
            store.query(colour="red")
        assert store.delete(model="baseline") == 8
        assert len(store) == 8


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(CascadeAdvError) as info:
        ResultsStore(path)
    assert str(info.value) == (
        f"results store {path} was written by a newer cascade-adv (schema "
        f"{SCHEMA_VERSION + 1} > {SCHEMA_VERSION}); upgrade cascade-adv or use another "
        "--results path"
    )


def test_foreign_files_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are not results\n")
    with pytest.raises(CascadeAdvError, match="not an SQLite database") as info:
        ResultsStore(text)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(CascadeAdvError, match="not a cascade-adv results store"):
        ResultsStore(other)
    with pytest.raises(CascadeAdvError, match="directory"):
        ResultsStore(tmp_path)


def test_closed_store_and_bad_rows() -> None:
    store = ResultsStore(":memory:")
    with pytest.raises(CascadeAdvError, match="lacks key 'value'"):
        store.upsert([{k: v for k, v in rows()[0].items() if k != "value"}])
    assert len(store) == 0  # nothing half-written
    store.close()
    with pytest.raises(CascadeAdvError, match="closed"):
        store.query()


def test_version1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE results (model TEXT NOT NULL, model_hash TEXT NOT NULL DEFAULT '', "
        "dataset TEXT NOT NULL, split TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, "
        "source TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL, n INTEGER NOT NULL, "
        "created TEXT NOT NULL, UNIQUE (model, dataset, split, attack, eps, source, metric))"
    )
    con.execute("INSERT INTO results VALUES ('m', '', 'mnist', 'test', 'clean', 0, 'whitebox', "
                "'top1', 99.0, 10, 'then')")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store.query().rows[0]["value"] == 99.0  # old rows kept
        store.register_model("m", init="seed:0")
        assert [m.name for m in store.models()] == ["m"]


def test_models_registry_and_same_init(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_model("B1", model_hash="h1", dataset="mnist", init="weights:aa")
        store.register_model("K1", init="weights:aa", experiment="bb", params={"lam2": 0})
        store.register_model("B2", init="weights:bb")
        store.register_model("X", init="")
        store.register_model("K1", init="weights:aa", experiment="bb", params={"lam2": 1e-4})
        assert store.same_init("B1", "K1")
        assert not store.same_init("B1", "B2")
        assert not store.same_init("X", "X")  # unknown init never counts as shared
        assert not store.same_init("B1", "unregistered")
        (k1,) = store.models(experiment="bb")
        assert k1.params == {"lam2": 1e-4} and k1.init == "weights:aa"
        assert [m.name for m in store.models()] == ["B1", "K1", "B2", "X"]


def test_a_failed_write_is_rolled_back(tmp_path: Path) -> None:
    """Every write is one transaction: an error inside it leaves the store as it was
    and ready for the next write."""
    with ResultsStore(tmp_path / "r.db") as store:
        store.upsert(rows(90.0))
        with pytest.raises(RuntimeError, match="crash"), store._transaction() as conn:
            conn.execute("DELETE FROM results")
            raise RuntimeError("crash mid-write")
        assert len(store.query()) == 8
        store.upsert(rows(50.0, model="other"))
        assert len(store.query()) == 16
