"""A folder's ``.lock`` is taken without following links: anything at that path that is
not a lock file is refused with one line naming it, and nothing is written to it."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from _cli import run_cli

from cascade_adv.errors import CascadeAdvError
from cascade_adv.io import LOCK_FILE, check_lock_file, folder_lock, lock_holder

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_baseline.yaml")
TINY = ["model.depth=8", "optim.iterations=4", "optim.lr_milestones=[]",
        "checkpoint.every=4", "log_every=4", "optim.batch_size=32"]
USER_TEXT = "the user's notes\n"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock locks only")


def _symlink(lock: Path, user: Path) -> None:
    lock.symlink_to(user)


def _dangling(lock: Path, user: Path) -> None:
    lock.symlink_to(user.parent / "absent.txt")  # opening it to create would make the target


def _folder(lock: Path, user: Path) -> None:
    lock.mkdir()
    (lock / "inside.txt").write_text(USER_TEXT)


def _fifo(lock: Path, user: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(lock)


def _socket(lock: Path, user: Path) -> None:
    if not hasattr(socket, "AF_UNIX") or len(str(lock)) > 100:
        pytest.skip("no Unix socket at this path")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(lock))


def _hard_link(lock: Path, user: Path) -> None:
    user.write_text("4242\n")  # even content that reads as a pid: another name shares it
    os.link(user, lock)


def _foreign_content(lock: Path, user: Path) -> None:
    lock.write_text(USER_TEXT)


NOT_A_LOCK = {"symlink": (_symlink, "a symbolic link to"),
              "dangling_symlink": (_dangling, "a symbolic link to"),
              "folder": (_folder, "a folder"), "fifo": (_fifo, "a named pipe"),
              "socket": (_socket, "a socket"), "hard_link": (_hard_link, "2 hard links"),
              "foreign_content": (_foreign_content, "something other than a process id")}


def _state(folder: Path) -> dict:
    """Every entry under ``folder`` with its type and (for files) content, links unfollowed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = ("file", p.read_bytes(), p.stat().st_nlink)
        else:
            out[str(p)] = ("other", p.is_dir())
    return out


@pytest.fixture()
def place(tmp_path):
    """``place(case, folder)``: puts the ``case`` thing at ``folder/.lock`` beside a user's
    file; returns the words the refusal must hold."""
    def put(case: str, folder: Path) -> str:
        make, words = NOT_A_LOCK[case]
        user = tmp_path / "notes.txt"
        user.write_text(USER_TEXT)
        make(folder / LOCK_FILE, user)
        return words
    return put


@pytest.mark.parametrize("case", list(NOT_A_LOCK))
def test_folder_lock_refuses_anything_but_a_lock_file_and_writes_nothing(tmp_path, place,
                                                                          case):
    folder = tmp_path / "run"
    folder.mkdir()
    words = place(case, folder)
    before = _state(tmp_path)
    for take in (lambda: folder_lock(folder, what="run folder").__enter__(),
                 lambda: check_lock_file(folder, "run folder")):
        with pytest.raises(CascadeAdvError) as info:
            take()
        assert isinstance(info.value, ValueError)  # an OutputPathError
        message = str(info.value)
        assert "\n" not in message and words in message and "remove it" in message
        assert str(folder / LOCK_FILE) in message
        assert _state(tmp_path) == before  # nothing written, created or removed


@pytest.mark.parametrize("content", ["", "12345\n", "12345"])
def test_a_lock_file_is_taken_and_holds_this_process_id(tmp_path, content):
    (tmp_path / LOCK_FILE).write_text(content)
    check_lock_file(tmp_path)
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    empty = tmp_path / "new"
    empty.mkdir()
    check_lock_file(empty)  # nothing there: nothing to refuse, nothing created
    assert not (empty / LOCK_FILE).exists()
    with folder_lock(empty):
        assert (empty / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_lock_holder_names_the_holder_and_writes_nothing(tmp_path, place):
    import subprocess

    folder = tmp_path / "step"
    folder.mkdir()
    assert lock_holder(folder) is None                    # no lock file: nobody
    assert not (folder / LOCK_FILE).exists()
    with folder_lock(folder):
        assert lock_holder(folder) == os.getpid()
    assert lock_holder(folder) is None                    # released
    code = ("import time; from cascade_adv.io import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n"
            "    print('held', flush=True); time.sleep(60)")
    held = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "held"
        before = _state(tmp_path)
        assert lock_holder(folder) == held.pid
        assert _state(tmp_path) == before
    finally:
        held.kill()
        held.wait()
    assert lock_holder(folder) is None                    # the kernel dropped it
    other = tmp_path / "other"
    other.mkdir()
    place("symlink", other)
    assert lock_holder(other) is None                     # not a lock file: never opened


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished tiny run (4 iterations)."""
    from cascade_adv.training import load_config, train

    work = tmp_path_factory.mktemp("lock")
    train(load_config(CONFIG, TINY), work / "run", progress=False)
    return work / "run"


@pytest.mark.parametrize("case", ["symlink", "folder", "fifo"])
def test_train_with_a_run_folder_whose_lock_is_not_a_lock_file_is_one_line(
        run_folder, tmp_path, place, case):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_folder, run, symlinks=True)
    (run / LOCK_FILE).unlink()
    words = place(case, run)
    before = _state(tmp_path)
    code, _, err = run_cli(["train", "--config", CONFIG, "--out", "run", "--quiet",
                            *TINY[:1], "optim.iterations=8", *TINY[2:]], tmp_path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err and f"run/{LOCK_FILE}" in err and "remove it" in err, err
    assert _state(tmp_path) == before  # the user's file keeps its content
    assert (tmp_path / "notes.txt").read_text() == USER_TEXT


def test_reproduce_refuses_a_step_folder_whose_lock_is_a_link_before_any_work(tmp_path,
                                                                              place):
    from cascade_adv.experiments.recipes import RECIPES, Builder, build_steps
    from cascade_adv.experiments.reproduce import Cache, default_configs, step_keys

    out = tmp_path / "cache"
    steps = build_steps(RECIPES["n18-table1"], Builder(default_configs(), "mnist", scale=0.01,
                                                        test_images=32, substitute="digits"),
                        only=["baseline"])
    cache = Cache(out, "digits")
    cache.open("n18-table1")
    step = next(s for s in steps if s.kind == "train")
    folder = cache.folder(step, step_keys(steps)[step.name])  # where the CLI trains it
    folder.mkdir(parents=True)
    words = place("symlink", folder)
    before = _state(tmp_path)
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(["reproduce", "n18-table1", "--out", str(out), "--dataset",
                                "digits", "--scale", "0.01", "--test-images", "32", "--only",
                                "baseline", "--quiet", *dry], tmp_path)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert words in err and "step folder" in err and "remove it" in err, err
        assert _state(tmp_path) == before
