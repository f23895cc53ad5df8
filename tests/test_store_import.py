"""Issue 29, classes 1 and 3: ``store import`` never replaces a row of another model hash
or a newer row, keeps the time a row was computed, and checks every pending row exactly
as a freshly computed one (one line naming the line and the field; nothing changes)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from _cli import run_cli

from cascade_adv.errors import CascadeAdvError, StoreConflict
from cascade_adv.results.store import PENDING_FORMAT, ResultsStore, import_rows
from cascade_adv.results.tables import ResultTable

OLD, NEW = "2026-01-01T10:00:00+00:00", "2026-01-02T10:00:00+00:00"


def row(model="m1", model_hash="h-old", attack="step_ll", eps=16.0, value=50.0, **kw):
    return {"model": model, "model_hash": model_hash, "dataset": "mnist", "split": "test",
            "attack": attack, "eps": eps, "source": "whitebox", "metric": "top1",
            "value": value, "n": 100, **kw}


def pending(path: Path, store: Path, rows=(), models=(), created=OLD, raw_lines=()) -> Path:
    lines = [json.dumps({"format": PENDING_FORMAT, "store": str(store.absolute()),
                         "reason": "locked", "created": created})]
    lines += [json.dumps({"model": m}) for m in models]
    lines += [json.dumps({"row": r}) for r in rows]
    path.write_text("\n".join([*lines, *raw_lines]) + "\n")
    return path


def stored(store: Path) -> list[tuple]:
    con = sqlite3.connect(store)
    try:
        return (con.execute("SELECT * FROM results ORDER BY rowid").fetchall()
                + con.execute("SELECT * FROM models ORDER BY rowid").fetchall())
    finally:
        con.close()


def newer_store(tmp_path: Path) -> Path:
    """A store holding m1's rows and record from a retrained m1 (hash h-new), written at
    NEW; plus m2's row, which no pending file touches."""
    db = tmp_path / "r.db"
    with ResultsStore(db) as s:
        s.merge([row(model_hash="h-new", value=90.0), row(model="m2", model_hash="h2")],
                [{"name": "m1", "model_hash": "h-new", "experiment": "retrained"}], NEW,
                on_conflict="replace")
    return db


# --- class 1: an import never replaces newer results ------------------------------------

def test_an_old_pending_file_does_not_replace_a_retrained_models_rows(tmp_path):
    db = newer_store(tmp_path)
    before = stored(db)
    file = pending(tmp_path / "p.jsonl", db, rows=[row(value=10.0), row(attack="iter_ll")],
                   models=[{"name": "m1", "model_hash": "h-old"}])
    with pytest.raises(StoreConflict) as info:
        import_rows(file)
    assert isinstance(info.value, ValueError)
    assert len(info.value.conflicts) == 2  # the model record and the step_ll row
    assert stored(db) == before  # rows, record and created all as they were

    status, _, err = run_cli(["store", "import", str(file)], tmp_path)
    assert status == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert [ln.startswith("conflict: ") for ln in lines] == [True, True, False], err
    assert "model hash h-new" in err and "--on-conflict" in lines[-1]
    assert stored(db) == before


def test_a_row_of_the_same_model_never_replaces_a_newer_one(tmp_path):
    db = newer_store(tmp_path)
    file = pending(tmp_path / "p.jsonl", db, rows=[row(model_hash="h-new", value=10.0)])
    with pytest.raises(StoreConflict, match="1 entries"):
        import_rows(file)
    assert ResultsStore(db).query(model="m1").rows[0]["value"] == 90.0


def test_an_older_row_of_the_same_model_is_replaced_and_keeps_its_computed_time(tmp_path):
    db = tmp_path / "r.db"
    with ResultsStore(db) as s:
        s.merge([row(value=90.0)], [], OLD)
    file = pending(tmp_path / "p.jsonl", db, rows=[row(value=10.0), row(attack="iter_ll")],
                   created=NEW)
    done = import_rows(file)
    assert (done.rows, done.models, done.conflicts) == (2, 0, [])
    con = sqlite3.connect(db)
    got = con.execute("SELECT attack, value, created FROM results ORDER BY attack").fetchall()
    con.close()
    assert got == [("iter_ll", 50.0, NEW), ("step_ll", 10.0, NEW)]  # not the import's time


@pytest.mark.parametrize("choice, m1_value, m1_hash", [("keep", 90.0, "h-new"),
                                                       ("replace", 10.0, "h-old")])
def test_on_conflict_keep_or_replace_is_the_users_explicit_choice(tmp_path, choice, m1_value,
                                                                   m1_hash):
    db = newer_store(tmp_path)
    file = pending(tmp_path / "p.jsonl", db, rows=[row(value=10.0), row(attack="iter_ll")],
                   models=[{"name": "m1", "model_hash": "h-old"}])
    status, _, err = run_cli(["store", "import", str(file), "--on-conflict", choice],
                               tmp_path)
    assert status == 0, err
    assert len(err.strip().splitlines()) == 2 and "conflict (" in err
    with ResultsStore(db) as s:
        assert s.query(model="m1", attack="step_ll").rows[0]["value"] == m1_value
        assert s.query(model="m1", attack="iter_ll").rows[0]["value"] == 50.0  # no conflict
        assert s.query(model="m2").rows[0]["value"] == 50.0
        assert {m.name: m.model_hash for m in s.models()}["m1"] == m1_hash


# --- class 3: a pending row is checked as a freshly computed one ----------------------

BAD_ROWS = {
    "value above 100": (row(value=101.0), "'value'"),
    "negative value": (row(value=-0.5), "'value'"),
    "infinite value": (row(value=float("inf")), "'value'"),
    "NaN value": (row(value=float("nan")), "'value'"),
    "boolean value": (row(value=True), "'value'"),
    "boolean count": (row(n=True), "'n'"),
    "boolean eps": (row(eps=False), "'eps'"),
    "text value": (row(value="50"), "'value'"),
    "fractional count": (row(n=2.5), "'n'"),
    "negative count": (row(n=-1), "'n'"),
    "count 1e30": (row(n=1e30), "'n'"),
    "eps beyond 255": (row(eps=300.0), "'eps'"),
    "missing model": ({k: v for k, v in row().items() if k != "model"}, "'model'"),
    "empty model": (row(model=" "), "'model'"),
    "model as a number": (row(model=7), "'model'"),
    "attack as a list": (row(attack=["step_ll"]), "'attack'"),
    "megabyte hash": (row(model_hash="f" * 1_000_000), "'model_hash'"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_an_invalid_pending_row_is_refused_naming_its_line_and_field(tmp_path, case):
    bad, field = BAD_ROWS[case]
    db = newer_store(tmp_path)
    before = stored(db)
    file = pending(tmp_path / "p.jsonl", db, rows=[row(attack="iter_ll"), bad])
    status, _, err = run_cli(["store", "import", str(file)], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "line 3 of" in err and field in err and "nothing was imported" in err, err
    assert stored(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "r.db"]  # no new file
    with pytest.raises(CascadeAdvError, match=field):  # a fresh row: the same check
        ResultTable([bad])


@pytest.mark.parametrize("case, lines, words", [
    ("duplicate row", [row(), row(value=20.0)], ["line 3", "the same row as line 2"]),
    ("duplicate model", [], ["line 3", "the same model as line 2"]),
])
def test_an_entry_given_twice_is_refused(tmp_path, case, lines, words):
    db = newer_store(tmp_path)
    models = [{"name": "m9"}, {"name": "m9"}] if case == "duplicate model" else []
    file = pending(tmp_path / "p.jsonl", db, rows=lines, models=models)
    with pytest.raises(CascadeAdvError) as info:
        import_rows(file)
    assert all(w in str(info.value) for w in words), info.value


@pytest.mark.parametrize("header, field", [
    ({"store": 123}, "'store'"),
    ({"store": ""}, "'store'"),
    ({"store": ["a"]}, "'store'"),
    ({"created": "yesterday"}, "'created'"),
    ({"created": "2026-01-01T10:00:00"}, "'created'"),  # no UTC offset
    ({"created": None}, "'created'"),
])
def test_a_header_that_names_no_store_or_time_is_refused(tmp_path, header, field):
    file = tmp_path / "p.jsonl"
    head = {"format": PENDING_FORMAT, "store": str(tmp_path / "r.db"), "created": OLD, **header}
    file.write_text(json.dumps(head) + "\n" + json.dumps({"row": row()}) + "\n")
    status, _, err = run_cli(["store", "import", str(file)], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "line 1 of" in err and field in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # no store named 123


def test_a_relative_store_path_needs_results(tmp_path):
    file = tmp_path / "p.jsonl"
    head = {"format": PENDING_FORMAT, "store": "r.db", "created": OLD}
    file.write_text(json.dumps(head) + "\n" + json.dumps({"row": row()}) + "\n")
    with pytest.raises(CascadeAdvError, match="relative path"):
        import_rows(file)
    assert not (tmp_path / "r.db").exists()
    assert import_rows(file, tmp_path / "r.db").rows == 1


def test_a_pending_file_written_by_a_failed_store_write_imports(tmp_path, monkeypatch):
    """The round trip: rows kept by a locked store come back with their computed time."""
    from cascade_adv.errors import StoreWriteError
    from cascade_adv.results import store as store_mod

    db = tmp_path / "r.db"
    ResultsStore(db).close()
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreWriteError) as info:
            store_mod.store_rows(db, [row()], [{"name": "m1", "model_hash": "h-old"}])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    file = Path(str(info.value).split("'cascade-adv store import ")[1].rstrip("'"))
    header = json.loads(file.read_text().splitlines()[0])
    done = import_rows(file)
    assert (done.rows, done.models) == (1, 1)
    con = sqlite3.connect(db)
    assert con.execute("SELECT created FROM results").fetchone()[0] == header["created"]
    con.close()


# --- fuzzing (issue 19's way, extended to pending rows) ---------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40),
              st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8), st.sampled_from(["", " ", "f" * 5000, "2026-13-01", "50"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
ROW_FIELDS = [*row(), "extra"]
HEADER_FIELDS = ["format", "store", "created", "reason"]


FIELDS = {"row": ROW_FIELDS, "model": ["name", "model_hash", "dataset", "params", "extra"],
          "header": HEADER_FIELDS, "line": [""]}
NUMBERS = st.one_of(st.integers(-10**40, 10**40), st.floats(), st.sampled_from(
    [1e30, -1, 0.5, 100.0001, 255.5, 2**63, True, False, None, "1", [1], {"a": 1}]))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(spot=st.sampled_from(["row", "row", "row", "model", "header", "line"]).flatmap(
           lambda w: st.tuples(st.just(w), st.sampled_from(FIELDS[w]))),
       value=st.one_of(ANY_JSON, NUMBERS), drop=st.booleans())
def test_fuzzed_pending_files_import_right_or_change_nothing(tmp_path_factory, spot, value,
                                                             drop):
    """Each case: a valid pending file with one field of a row, a model record or the
    header replaced by a drawn value (or dropped), or a drawn extra line.  The import ends
    with one line and exit 2 and every file as it was, or with exit 0 and exactly the
    file's rows in the store, with the file's time."""
    where, field = spot
    tmp = tmp_path_factory.mktemp("fz")
    db = tmp / "r.db"
    with ResultsStore(db) as s:
        s.merge([row(model="m2")], [], OLD)
    entries = [{"row": row(attack="iter_ll", model_hash="h")}, {"model": {"name": "m1"}}]
    header = {"format": PENDING_FORMAT, "store": str(db), "created": NEW, "reason": "x"}
    target = {"row": entries[0]["row"], "model": entries[1]["model"], "header": header}.get(where)
    if target is not None:
        if drop:
            target.pop(field, None)
        else:
            target[field] = value
    lines = [json.dumps(header)] + [json.dumps(e) for e in entries]
    if where == "line":
        lines.append(json.dumps(value))
    file = tmp / "p.jsonl"
    file.write_text("\n".join(lines) + "\n")
    before, file_bytes = stored(db), file.read_bytes()

    status, _, err = run_cli(["store", "import", str(file)], tmp)
    assert "Traceback" not in err and file.read_bytes() == file_bytes
    assert sorted(p.name for p in tmp.iterdir()) == ["p.jsonl", "r.db"]
    if status != 0:
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert stored(db) == before
        return
    with ResultsStore(db) as s:
        got = s.query(model=entries[0]["row"]["model"], attack=entries[0]["row"]["attack"]).rows
        assert got == [ResultTable([entries[0]["row"]]).rows[0]]
        assert [m.name for m in s.models()] == [entries[1]["model"]["name"]]
    con = sqlite3.connect(db)
    assert {c for (c,) in con.execute("SELECT created FROM results")} == {OLD, NEW}
    con.close()
