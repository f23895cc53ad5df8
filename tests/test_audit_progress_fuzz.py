"""Property-based: ``cascade-adv audit`` rerun over a mutated progress file of an
interrupted audit gives exactly the numbers of an uninterrupted audit (having said in
one warning line that it discarded the file) or one line and exit status 2, and changes
no user file (issue 29, class 4).

The mutations: the file's text cut, spliced or emptied; a field replaced, removed or
one of its entries changed, with the checksum left stale; an entry set outside its type
or range, a list lengthened or shortened, the audit's own settings changed, or the
outcomes made inconsistent, with the checksum recomputed (an edit the checksum cannot
tell, so that the field checks must); and a folder, a FIFO or a symbolic link to a
user's file or folder at the path.  The number of cases is ``MAX_EXAMPLES``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
from _cli import run_cli

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_baseline.yaml")
TINY = ["model.depth=8", "model.width=0.5", "optim.iterations=30", "optim.lr_milestones=[]",
        "optim.batch_size=32"]
MAX_EXAMPLES = 80
#: Two attacks on 16 images in four batches at two epsilons.
AUDIT = ["audit", "--checkpoint", "../run", "--eps", "16,64", "--version",
         "iter_fgsm:steps=3:alpha=8,random_sign", "--limit", "16", "--batch-size", "4",
         "--quiet", "--no-checks", "--results", "r.db"]
ATTACKS = 2


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny trained run, a user's files, the table of an uninterrupted audit, and the
    progress file of the same audit interrupted in its third batch."""
    from cascade_adv.training import load_config, train

    work = tmp_path_factory.mktemp("progress_fuzz")
    train(load_config(CONFIG, TINY), work / "run", progress=False)
    (work / "user").mkdir()
    (work / "user" / "notes.txt").write_text("a user's file\n")
    (work / "user" / "paper").mkdir()
    (work / "user" / "paper" / "paper.tex").write_text("years of work\n")
    (work / "base").mkdir()
    code, table, err = run_cli(AUDIT, work / "base")
    assert code == 0 and err == "", err
    (work / "cut").mkdir()
    module = importlib.import_module("cascade_adv.evaluation.audit")
    audit_batch = module._audit_batch

    def crash(run, state, k, *args):
        if k == 2:  # Ctrl-C as the third batch starts
            raise KeyboardInterrupt
        return audit_batch(run, state, k, *args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(module, "_audit_batch", crash)
        code, _, err = run_cli(AUDIT, work / "cut")
    assert code == 130 and "audit" in err, err
    (path,) = (work / "cut").glob("r.db.audit-*.json")
    saved = json.loads(path.read_text())
    assert saved["finished"] == [ATTACKS, ATTACKS, 0, 0]
    assert any(v >= 0 for row in saved["broken_by"] for v in row)  # some image was broken
    return work, table, path.name, saved


# --- the mutations ------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False), st.text(max_size=4))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=3),
                                                                     inner, max_size=3)),
                    max_leaves=6)
FIELDS = ["format", "layout", "key", "owner", "n", "batch_size", "eps", "attacks", "writer",
          "finished", "clean", "broken_by", "digest"]


def not_in(low: int, high: int, flags: bool = False):
    """JSON values that are not integers in [low, high] (``flags``: not 0, 1, true or
    false either)."""
    ints = st.one_of(st.integers(-(2**70), low - 1), st.integers(high + 1, 2**70))
    others = st.one_of(st.none(), st.floats(allow_nan=False), st.text(max_size=3),
                       st.lists(st.integers(0, 1), max_size=2))
    return st.one_of(ints, others, st.just(True) if not flags else st.nothing())


def changed(text: bytes, saved: dict) -> bool:
    """``text`` is not ``saved``'s content as JSON (``1`` is not ``1.0`` nor ``true``)."""
    try:
        return (json.dumps(json.loads(text.decode()), sort_keys=True)
                != json.dumps(saved, sort_keys=True))
    except (ValueError, RecursionError):
        return True


def resign(saved: dict) -> dict:
    from cascade_adv.evaluation.progress import digest

    return {**saved, "digest": digest(saved)}


@st.composite
def raw_edit(draw, saved: dict) -> tuple[bytes, bool, str]:
    """A damaged file: text cut / spliced / emptied, or a field replaced, removed or an
    entry changed, checksum stale.  Returns (bytes, whether a warning is due, label)."""
    text = json.dumps(saved, separators=(",", ":")).encode()
    kind = draw(st.sampled_from(["cut", "splice", "empty", "field", "drop", "entry"]))
    if kind == "cut":
        return text[:draw(st.integers(0, len(text) - 1))], True, "raw cut"
    if kind == "splice":  # may keep the content (a space between two tokens)
        at = draw(st.integers(0, len(text)))
        out = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
        return out, changed(out, saved), "raw splice"
    if kind == "empty":
        return b"", True, "raw empty"
    edited = json.loads(text)
    name = draw(st.sampled_from(["finished", "clean", "broken_by", "eps", "attacks"]
                                if kind == "entry" else FIELDS))
    if kind == "drop":
        del edited[name]
    elif kind == "field" or not isinstance(edited[name], list) or not edited[name]:
        edited[name] = draw(JSON)
    else:
        row = edited[name]
        if name == "broken_by":
            row = row[draw(st.integers(0, len(row) - 1))]
        row[draw(st.integers(0, len(row) - 1))] = draw(JSON)
    out = json.dumps(edited).encode()
    return out, changed(out, saved), f"raw {kind} {name}"


@st.composite
def signed_edit(draw, saved: dict) -> tuple[bytes, bool, str]:
    """An edit that breaks a rule of the file, checksum recomputed."""
    s = json.loads(json.dumps(saved))
    n, batch = s["n"], s["batch_size"]
    kind = draw(st.sampled_from(["finished", "clean", "broken", "length", "setting",
                                 "unstarted", "order", "wrong_clean"]))
    if kind == "finished":
        s["finished"][draw(st.integers(0, len(s["finished"]) - 1))] = draw(not_in(0, ATTACKS))
    elif kind == "clean":
        s["clean"][draw(st.integers(0, n - 1))] = draw(not_in(0, 1, flags=True))
    elif kind == "broken":
        row = s["broken_by"][draw(st.integers(0, len(s["broken_by"]) - 1))]
        row[draw(st.integers(0, n - 1))] = draw(not_in(-1, ATTACKS - 1))
    elif kind == "length":
        target = draw(st.sampled_from(["finished", "clean", "broken_by", "row"]))
        lst = s["broken_by"][0] if target == "row" else s[target]
        lst.append(lst[-1]) if draw(st.booleans()) else lst.pop()
    elif kind == "setting":
        name = draw(st.sampled_from(["n", "batch_size", "eps", "attacks", "key", "layout"]))
        s[name] = draw(JSON.filter(lambda v: json.dumps(v) != json.dumps(saved[name])))
    elif kind == "unstarted":  # an outcome in batch 2 or 3, which no attack had reached
        i = draw(st.integers(2 * batch, n - 1))
        if draw(st.booleans()):
            s["clean"][i] = 1
        else:
            s["clean"][i], s["broken_by"][0][i] = 1, draw(st.integers(0, ATTACKS - 1))
            s["finished"][i // batch] = 0
    elif kind == "order":  # the last batch started before the third
        s["finished"][3] = draw(st.integers(1, ATTACKS))
    else:  # a started image broken although wrong clean
        i = draw(st.integers(0, 2 * batch - 1))
        s["clean"][i], s["broken_by"][0][i] = 0, draw(st.integers(0, ATTACKS - 1))
    return json.dumps(resign(s)).encode(), True, f"signed {kind}"


def place(case: Path, name: str, what, work: Path) -> bool:
    """Put ``what`` (bytes, or a structural case) at the progress path; whether a
    warning is due."""
    path = case / name
    if isinstance(what, tuple):
        path.write_bytes(what[0])
        return what[1]
    if what == "valid":
        shutil.copy(work / "cut" / name, path)
        return False
    if what == "folder":
        (path / "kept").mkdir(parents=True)
    elif what == "fifo":
        os.mkfifo(path)
    else:  # a link to a user's file or folder
        path.symlink_to(work / "user" / ("notes.txt" if what == "link_file" else "paper"))
    return True


STRUCTURAL = st.sampled_from(["valid", "folder", "fifo", "link_file", "link_folder"])


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_progress_file_gives_the_right_numbers_or_one_line(work, data):
    work, table, name, saved = work
    family = data.draw(st.sampled_from(["raw", "signed", "structural"]))
    what = data.draw({"raw": raw_edit(saved), "signed": signed_edit(saved),
                      "structural": STRUCTURAL}[family])
    event(what[2] if isinstance(what, tuple) else what)
    case = work / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    warned = place(case, name, what, work)
    before = snapshot(work / "user"), snapshot(work / "run")
    code, out, err = run_cli(AUDIT, case)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if code == 2:
        assert len(lines) == 1, err
    else:  # the uninterrupted audit's table; one warning exactly when the file was off
        assert code == 0 and out == table, (code, out, err)
        assert len(lines) == int(warned), err
        assert all(line.startswith("warning: audit progress file ") and name in line
                   for line in lines), err
    assert (snapshot(work / "user"), snapshot(work / "run")) == before
    if isinstance(what, str) and what != "valid":
        assert os.path.lexists(case / name)  # left as it was
        if what == "folder":
            assert (case / name / "kept").is_dir()
    else:
        assert not os.path.lexists(case / name)  # discarded or taken over, then removed
