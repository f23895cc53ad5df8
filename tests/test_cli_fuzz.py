"""Property-based: malformed configs, overrides and arguments for every command give
exit status 2, one line on stderr, no traceback, and change no file.

For each command a case is its valid arguments plus one to three malformed ones
(each malformed on its own, whatever the others are), drawn by hypothesis from
curated bad values and generated text.  The CLI runs in-process; the work folder
(a trained run, a user's files) is hashed before and after every case.  The number
of cases per command is ``MAX_EXAMPLES`` (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _cli import run_cli

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_baseline.yaml")
MAX_EXAMPLES = 100
COLLISION_EXAMPLES = 40
TINY = ["model.depth=8", "optim.iterations=4", "optim.lr_milestones=[]", "optim.batch_size=32"]
CUDA = torch.cuda.is_available()


def run(argv, cwd):
    """``cascade-adv ARGV`` in this process: (exit status, stdout, stderr)."""
    return run_cli(argv, cwd)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from cascade_adv.io import folder_lock
    from cascade_adv.training import load_config, train

    work = tmp_path_factory.mktemp("fuzz")
    train(load_config(CONFIG, TINY), work / "run", progress=False)
    shutil.copytree(work / "run", work / "busy")  # a run another writer holds (below)
    (work / "notes.txt").write_text("a user's file\n")
    (work / "userdir").mkdir()
    (work / "userdir" / "paper.tex").write_text("years of work\n")
    (work / "emptydir").mkdir()
    (work / "fake.safetensors").write_text("not weights")
    for name, text in {"empty.yaml": "", "comments.yaml": "# nothing\n",
                       "list.yaml": "- a\n- b\n", "syntax.yaml": "optim: [1,\n",
                       "unknown.yaml": "optim:\n  nope: 1\n", "wrongtype.yaml": "optim:\n  lr: abc\n",
                       "scalar.yaml": "42\n", "cycle.yaml": "extends: cycle.yaml\nseed: 1\n",
                       **HOSTILE_YAML}.items():
        (work / name).write_text(text)
    (work / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    (work / "runlink").symlink_to(work / "run")  # a link into the run: resolved by the checks
    (work / "cfgdir").mkdir()
    (work / "cfgdir" / "c.yaml").write_text(Path(CONFIG).read_text())
    (work / "pending.jsonl").write_text(  # rows a locked store could not take
        '{"format": "cascade-adv/pending-rows/1", "store": "r.db", "created": '
        '"2026-01-01T00:00:00+00:00"}\n{"row": {"model": "m", '
        '"dataset": "digits", "split": "test", "attack": "clean", "eps": 0, "source": '
        '"whitebox", "metric": "top1", "value": 50.0, "n": 8}}\n')
    assert run(["eval", "--checkpoint", "run", "--limit", "8", "--attacks", "step_ll", "--eps",
                "4", "--quiet", "--results", "store.db"], work)[0] == 0
    with folder_lock(work / "busy"):  # held by this process for every case
        yield work


# --- malformed values ---------------------------------------------------------------------

def ints_not_positive():
    return st.one_of(st.integers(max_value=0).map(str),
                     st.sampled_from(["abc", "1.5", "", " ", "1e3", "0x"]))


EPS = st.one_of(
    st.sampled_from(["", ",", " , ", "300", "-1", "abc", "nan", "inf", "-inf", "4,x", "255.5"]),
    st.floats(min_value=255.001, max_value=1e12).map(repr),
    st.floats(max_value=-1e-6, allow_infinity=False).map(repr),
    st.text(alphabet="abxyz!@# ", min_size=1, max_size=6),
)
ATTACKS = st.one_of(st.sampled_from(["", ",", "nope", "step_ll,nope", "STEP-LL", "clean_"]),
                    st.text(alphabet="qwz_", min_size=1, max_size=8))
DEVICES = st.sampled_from(["foo", "tpu:0", "", "cpu:x", "cuda:99"] + ([] if CUDA else ["cuda"]))
CHECKPOINTS = st.sampled_from(["missing_run", "notes.txt", "emptydir", "fake.safetensors",
                               "userdir"])
DATASETS = st.sampled_from(["mnist", "cifar10", "imagenet", "svhn", ""])
RESULTS = st.sampled_from(["userdir", "emptydir", "notes.txt", "notes.txt/r.db", "/proc/r.db",
                           "fake.safetensors"])
FILE_OUT = st.sampled_from(["userdir", "emptydir", "notes.txt/t.csv", "/proc/t.csv"])


class Colliding(str):
    """A drawn value whose output is, holds or lies inside an input of its command (the
    model ``run``, the store ``r.db``; also through the symlink ``runlink``) or another
    of its outputs (issue 19, class 1): counted apart in the report."""


def colliding(values):
    """``values`` (strings, or (options, overrides) pairs) drawn as :class:`Colliding`."""
    def mark(v):
        if isinstance(v, tuple):
            return tuple([Colliding(x) for x in part] for part in v)
        return Colliding(v)

    return st.sampled_from(values).map(mark)


COLLIDING_FILE = colliding(["r.db", "./r.db", "run/t.csv", "run/final/model.safetensors",
                            "runlink/t.csv", "runlink/final/model.safetensors",
                            "run/config.yaml"])
SET_OUT = st.one_of(st.sampled_from([".", "..", "run", "run/final", "userdir", "notes.txt",
                                    "notes.txt/sub", "/proc/adv"]),
                    colliding(["runlink", "run/sub", "runlink/adv", "run/checkpoints"]))
DIR_OUT = st.sampled_from(["notes.txt", "notes.txt/sub", "/proc/x"])
#: config files past textdata's limits or with what YAML refuses (issue 19, class 6)
_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 10)}]\n"
                for i in range(9)).replace("l8: ", "paper: ")  # 10^9 values expanded
HOSTILE_YAML = {"deep.yaml": "seed: " + "[" * 20000 + "]" * 20000 + "\n", "bomb.yaml": _BOMB,
                "selfalias.yaml": "optim:\n  lr_milestones: &m [1, *m]\n",
                "tag.yaml": "seed: !!python/object/apply:os.system ['echo owned']\n",
                "tabs.yaml": "optim:\n\tlr: 0.1\n", "bigint.yaml": "seed: " + "9" * 5000 + "\n",
                "wide.yaml": "extends: " + CONFIG + "\nmodel: {width: .inf}\n"}
#: folders that hold or lie inside the model ``run``
COLLIDING_DIR = colliding([".", "run", "runlink", "run/sets", "runlink/x"])
#: (options, overrides) pairs whose outputs collide with each other or an input
COLLIDE_EVAL = colliding([(["--csv", "t.csv", "--json", "t.csv"], []),
                          (["--csv", "t.csv", "--json", "./t.csv"], []),
                          (["--csv", "sub/t.csv", "--json", "sub/../sub/t.csv"], []),
                          (["--csv", "r.db"], [])])
COLLIDE_TRAIN = colliding([(["--out", "run/sub"], ["init_from=run"]),
                           (["--out", "runlink/sub"], ["init_from=run"]),
                           (["--out", "run2"], ["init_from=run2/../run2"]),
                           (["--config", "cfgdir/c.yaml", "--out", "cfgdir"], []),
                           (["--out", "."], ["init_from=run"]),
                           (["--out", "cfgdir/run"], ["init_from=cfgdir"])])
CONFIGS = st.sampled_from(["missing.yaml", "bin.yaml", "empty.yaml", "comments.yaml",
                           "list.yaml", "syntax.yaml", "unknown.yaml", "wrongtype.yaml",
                           "scalar.yaml", "cycle.yaml", "userdir", *HOSTILE_YAML])
_KEYS = ("name", "seed", "init_from", "device", "log_every", "data", "model", "optim",
         "checkpoint", "adversarial", "distributed", "speed", "extends", "monitor", "paper",
         "init_mode")
_BAD_OVERRIDES = st.sampled_from(["noeq", "=1", "optim=3", "optim.lr=-1", "optim.iterations=0",
                     "name=../x", "name=/abs", "name=a/../../b", "device=foo", "model.depth=9",
                     "data.dataset=svhn", "optim.lr_milestones=[5, 2]", "seed=abc",
                     "adversarial.mode=sideways", "data.crop_size=100", "init_from=notes.txt",
                     "optim.batch_size=100000", "adversarial.max_e=300", "optim.lr=nan_",
                     # issue 19: malformed YAML values, numbers outside what can be built
                     "optim.lr=[0.1", "name=*foo", "name=&a [*a]", "optim.lr=\t0.1",
                     "seed=!!python/object/apply:os.system [x]", "seed=" + "[" * 5000,
                     "seed=18446744073709551616", "seed=-1", "seed=" + "9" * 5000,
                     "model.width=.inf", "model.width=.nan", "model.width=1e6",
                     "model.width=64", "model.depth=60000002", "optim.lr=.inf",
                     "data.crop_size=100000", "optim.lr=" + "x" * 100_000]
                    + ([] if CUDA else ["device=cuda"]))
#: values of numeric keys from YAML's syntax characters (no digits or letters: never a number)
_YAML_VALUES = st.builds("{}={}".format,
                         st.sampled_from(["optim.lr", "seed", "model.width", "model.depth"]),
                         st.text(alphabet="[]{}*&!|>:,'\"\t#%@`-?. ~\\x", min_size=1,
                                 max_size=12))
OVERRIDES = st.one_of(
    _BAD_OVERRIDES, _BAD_OVERRIDES, _YAML_VALUES,  # twice the weight of the generated keys
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}=[a-z0-9]{0,4}", fullmatch=True).filter(
        lambda s: s.split(".")[0].split("=")[0] not in _KEYS),
)
UNKNOWN = st.sampled_from(["--nope", "--limit", "--eps=", "-x", "extra_argument"])


COMMON_MODEL = {"--limit": ints_not_positive(), "--batch-size": ints_not_positive(),
                "--device": DEVICES, "--dataset": DATASETS, "--checkpoint": CHECKPOINTS,
                "?": UNKNOWN, "--split": st.sampled_from(["val", "", "TRAIN"]),
                "--seed": st.sampled_from(["abc", "1.5", "", "-1", "18446744073709551616",
                                           "9" * 5000])}
ANALYSIS = {"--limit": ints_not_positive(), "--batch-size": ints_not_positive(),
            "--device": DEVICES, "--dataset": DATASETS, "--results": RESULTS, "?": UNKNOWN,
            "--model": st.sampled_from(["missing_run", "fake.safetensors", "../x=run",
                                        "a/b=run", "notes.txt"]),
            "--eps": EPS, "--images": ints_not_positive(),
            "--figure": st.one_of(FILE_OUT, COLLIDING_FILE)}
SWEEP = {"--config": CONFIGS, "@override": OVERRIDES, "--limit": ints_not_positive(),
         "--batch-size": ints_not_positive(), "--results": RESULTS, "--eps": EPS,
         "--attacks": ATTACKS, "--out": st.one_of(DIR_OUT, colliding([".", "r.db"])),
         "--figure": st.one_of(FILE_OUT, colliding(["r.db", "./r.db"])), "?": UNKNOWN}
SWEEP_BASE = ["--config", CONFIG, "--limit", "8", "--attacks", "step_ll", "--eps", "4",
              "--quiet", "--results", "r.db", *TINY]

COMMANDS = {
    "train": (["train", "--config", CONFIG, "--out", "newrun", "--quiet", *TINY],
              {"--config": CONFIGS, "@override": OVERRIDES, "?": UNKNOWN,
               "--out": st.one_of(DIR_OUT, st.just("busy")),  # busy: another writer holds it
               "@collide": COLLIDE_TRAIN,
               # resuming the trained run with a config that changes what it computes
               "@resume": st.sampled_from(["optim.lr=0.05", "seed=3", "optim.momentum=0.5",
                                           "optim.lr_milestones=[2]", "optim.iterations=2",
                                           "model.depth=14", "data.flip=true",
                                           "optim.weight_decay=0.001", "init_mode=continue"])}),
    "eval": (["eval", "--checkpoint", "run", "--limit", "8", "--attacks", "step_ll", "--eps",
              "4", "--quiet", "--results", "r.db"],
             {**COMMON_MODEL, "--eps": EPS, "--attacks": ATTACKS, "--results": RESULTS,
              "--csv": st.one_of(FILE_OUT, COLLIDING_FILE),
              "--json": st.one_of(FILE_OUT, COLLIDING_FILE), "@collide": COLLIDE_EVAL,
              "--precision": st.sampled_from(["fp8", "", "bf17"])}),
    "audit": (["audit", "--checkpoint", "run", "--limit", "8", "--version", "iter_fgsm",
               "--eps", "4", "--quiet", "--results", "r.db"],
              {**COMMON_MODEL, "--eps": st.one_of(EPS, st.sampled_from(["0", "4,0", "0.0"])),
               "--version": st.one_of(ATTACKS, st.sampled_from(
                   ["strong", "pgd:", "pgd:restarts", "pgd:nope=1", "pgd,pgd", "quick,"])),
               "--results": RESULTS, "--csv": FILE_OUT, "--json": FILE_OUT,
               "--twin": CHECKPOINTS}),
    "attack": (["attack", "--checkpoint", "run", "--attack", "step_ll", "--eps", "4",
                "--limit", "8", "--quiet", "--out", "adv"],
               {**COMMON_MODEL, "--eps": EPS, "--attack": ATTACKS, "--out": SET_OUT}),
    "craft": (["craft", "--checkpoint", "run", "--eps", "4", "--limit", "8", "--quiet",
               "--out", "adv"],
              {**COMMON_MODEL, "--eps": EPS, "--attack": ATTACKS, "--out": SET_OUT}),
    "transfer": (["transfer", "--source", "A=run", "--target", "B=run", "--attacks", "step_ll",
                  "--eps", "4", "--limit", "8", "--quiet", "--results", "r.db"],
                 {"--source": st.sampled_from(["missing_run", "../x=run", "A=fake.safetensors",
                                               "a/b=run"]),
                  "--target": st.sampled_from(["missing_run", "x\\y=run", "notes.txt"]),
                  "--attacks": ATTACKS, "--eps": EPS, "--limit": ints_not_positive(),
                  "--batch-size": ints_not_positive(), "--device": DEVICES,
                  "--dataset": DATASETS, "--results": RESULTS,
                  "--csv": st.one_of(FILE_OUT, COLLIDING_FILE),
                  "--sets": st.one_of(DIR_OUT, COLLIDING_DIR), "?": UNKNOWN}),
    "analyze softmax": (["analyze", "softmax", "--model", "run", "--eps", "0,4", "--images", "4",
                         "--limit", "8", "--quiet", "--results", "r.db", "--figure", "f.png"],
                        {**ANALYSIS, "--methods": ATTACKS}),
    "analyze gradcorr": (["analyze", "gradcorr", "--model", "run", "--eps", "0,4", "--images",
                          "4", "--limit", "8", "--quiet", "--results", "r.db", "--figure",
                          "f.png"], ANALYSIS),
    "analyze transfer-eps": (["analyze", "transfer-eps", "--source", "A=run", "--target",
                              "B=run", "--attacks", "step_ll", "--eps", "4", "--limit", "8",
                              "--quiet", "--results", "r.db", "--figure-dir", "figs"],
                             {"--source": st.sampled_from(["missing_run", "../x=run"]),
                              "--target": st.sampled_from(["A=run", "notes.txt"]),
                              "--attacks": ATTACKS, "--eps": EPS, "--limit": ints_not_positive(),
                              "--device": DEVICES, "--results": RESULTS,
                              "--figure-dir": st.one_of(DIR_OUT, colliding(
                                  ["run", "runlink", "run/figs", "runlink/x"])),
                              "--sets": st.one_of(DIR_OUT, COLLIDING_DIR, colliding(["figs"])),
                              "?": UNKNOWN}),
    "analyze lambda2": (["analyze", "lambda2", *SWEEP_BASE[:-len(TINY)], "--values", "0",
                         "--figure", "f.png", *TINY],
                        {**SWEEP, "--values": st.sampled_from(["", ",", "abc", "-1", "-0.5,0",
                                                               "x,1", "nan", "inf"])}),
    "analyze capacity": (["analyze", "capacity", *SWEEP_BASE[:-len(TINY)], "--widths", "0.25",
                          "--figure", "f.png", *TINY],
                         {**SWEEP, "--widths": st.sampled_from(["", "0", "-1", "abc", ",",
                                                                "0,1"])}),
    "analyze activations": (["analyze", "activations", *SWEEP_BASE[:-len(TINY)],
                             "--activations", "relu", "--figure", "f.png", *TINY],
                            {**SWEEP, "--activations": st.sampled_from(
                                ["", "nope", "relu_decay:abc", "relu_decay:-1", ","])}),
    "analyze label-leaking": (["analyze", "label-leaking", *SWEEP_BASE[:-len(TINY)],
                               "--methods", "step_ll", "--figure", "f.png", *TINY],
                              {**SWEEP, "--methods": st.sampled_from(["", "nope", ","])}),
    "analyze seeds": (["analyze", "seeds", *SWEEP_BASE[:-len(TINY)], "--seeds", "1", *TINY],
                      {**{k: v for k, v in SWEEP.items() if k != "--figure"},
                       "--seeds": st.sampled_from(["", "abc", "1.5", ","])}),
    "report": (["report", "--results", "store.db", "--out", "rep"],
               {"--results": st.sampled_from(["missing.db", "userdir", "notes.txt",
                                              "fake.safetensors", "/proc/r.db"]),
                "--out": st.sampled_from(["notes.txt", "notes.txt/sub", "/proc/x", "userdir",
                                          "."]), "?": UNKNOWN}),
    "quickstart": (["quickstart", "--out", "qs", "--results", "r.db", "--quiet"],
                   {"--out": st.one_of(DIR_OUT, colliding([".", "r.db"])),
                    "--results": st.one_of(RESULTS, colliding(["qs/r.db"])), "--device": DEVICES,
                    "?": st.sampled_from(["--nope", "extra_argument", "--out"])}),
    "store import": (["store", "import", "pending.jsonl", "--results", "r.db"],
                     {"--results": st.one_of(RESULTS, colliding(["pending.jsonl",
                                                                 "./pending.jsonl"])),
                      "?": UNKNOWN}),
    "attacks": (["attacks"], {"?": st.sampled_from(["--nope", "extra", "-x"])}),
    "(top level)": ([], {"?": st.sampled_from(["nope", "--nope", "evaluate", "train2"])}),
}
#: the options of each command drawn only from output / input collisions (issue 19, class 1):
#: every case of :func:`test_colliding_outputs_are_one_line_exit_2_and_change_nothing`
#: collides, alone or with the others
_SWEEP_COLLIDE = {"--out": colliding([".", "r.db", "./r.db/.."]),
                  "--figure": colliding(["r.db", "./r.db"])}
COLLIDING = {
    "train": {"@collide": COLLIDE_TRAIN},
    "eval": {"--csv": COLLIDING_FILE, "--json": COLLIDING_FILE, "@collide": COLLIDE_EVAL},
    "attack": {"--out": colliding(["run", "runlink", "run/sub", "runlink/adv", ".",
                                   "run/checkpoints"])},
    "craft": {"--out": colliding(["run", "runlink", "run/final", "runlink/adv", ".."])},
    "transfer": {"--csv": COLLIDING_FILE, "--sets": COLLIDING_DIR},
    "analyze softmax": {"--figure": COLLIDING_FILE},
    "analyze gradcorr": {"--figure": COLLIDING_FILE},
    "analyze transfer-eps": {"--sets": colliding(["figs", ".", "run", "runlink"]),
                             "--figure-dir": colliding(["run", "runlink/x", "run/figs"])},
    **{f"analyze {name}": _SWEEP_COLLIDE for name in ("lambda2", "capacity", "activations",
                                                      "label-leaking")},
    "analyze seeds": {"--out": _SWEEP_COLLIDE["--out"]},
    # any two of these collide too: every --out holds every --results
    "quickstart": {"--out": colliding([".", "qs/.."]),
                   "--results": colliding(["qs/r.db", "qs/sub/r.db"])},
    "store import": {"--results": colliding(["pending.jsonl", "./pending.jsonl",
                                             "runlink/../pending.jsonl"])},
}
#: generated cases per command, filled in as the tests run (reported in docs/reliability.md),
#: and of those the cases with an output / input collision
CASES: dict[str, int] = {}
COLLISIONS: dict[str, int] = {}


def _fuzz(work, name: str, base: list, options: dict, examples: int) -> None:
    """Run ``examples`` cases of ``base`` plus one to three drawn ``options``: each must exit
    2 with one line on stderr, no traceback, and leave ``work`` unchanged."""
    before = snapshot(work)
    CASES[name] = COLLISIONS[name] = 0
    names = sorted(options)

    # half the cases one malformed argument (so that no earlier check hides a later
    # one), half two or three together
    single = st.sampled_from(names).map(lambda k: [k])
    several = st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(keys=st.one_of(single, several) if len(names) > 1 else single, data=st.data())
    def case(keys, data):
        argv = list(base)
        overrides = []
        for key in keys:
            value = data.draw(options[key], label=key)
            if key == "@override":
                overrides.append(value)
            elif key == "@resume":  # into the trained run (a later --out would win)
                argv += ["--out", "run"]
                overrides.append(value)
            elif key == "@collide":  # options and overrides that only collide together
                argv += value[0]
                overrides += value[1]
            elif key == "?":
                argv.append(value)
            else:
                argv += [key, value]
        argv += overrides  # KEY=VALUE arguments after the options
        CASES[name] += 1
        COLLISIONS[name] += any(isinstance(a, Colliding) for a in argv)
        code, _, err = run(argv, work)
        assert code == 2, (argv, code, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert snapshot(work) == before, argv

    case()
    assert CASES[name] >= 1
    report = os.environ.get("CASCADE_ADV_FUZZ_REPORT")  # docs/reliability.md's counts
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"command": name, "cases": CASES[name],
                                 "collisions": COLLISIONS[name]}) + "\n")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(work, command):
    base, options = COMMANDS[command]
    _fuzz(work, command, base, options, MAX_EXAMPLES)


@pytest.mark.parametrize("command", list(COLLIDING))
def test_colliding_outputs_are_one_line_exit_2_and_change_nothing(work, command):
    base, _ = COMMANDS[command]
    _fuzz(work, f"{command} (collisions)", base, COLLIDING[command], COLLISION_EXAMPLES)
    assert COLLISIONS[f"{command} (collisions)"] == CASES[f"{command} (collisions)"]


# --- issue 19, classes 4-7: one case, one hostile value, so that each reaches its check ----

def _deep(depth: int, key: str) -> str:
    return f"{key}: " + "[" * depth + "]" * depth + "\n"


def _bomb(levels: int, width: int, key: str) -> str:
    """Anchors ``l0 .. l{levels-1}``, each ``width`` aliases of the one before
    (``width ** levels`` values expanded), the last under ``key`` (a known key)."""
    lines = [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * width)}]"
             for i in range(levels)]
    return "\n".join(lines[:-1]) + "\n" + lines[-1].replace(f"l{levels - 1}:", f"{key}:") + "\n"


_KNOWN = st.sampled_from(["seed", "paper", "name", "log_every"])
YAML_DOCS = st.one_of(
    st.builds(_deep, st.integers(33, 20000), _KNOWN),
    st.builds(_bomb, st.integers(5, 9), st.integers(10, 20), _KNOWN),
    st.builds("{}: !!python/{} {}\n".format, _KNOWN,
              st.sampled_from(["object/apply:os.system", "name:os.system", "object:os.Popen"]),
              st.sampled_from(["['echo owned']", "x", "{}"])),
    st.builds("optim:\n{}lr: 0.1\n".format, st.sampled_from(["\t", " \t", "\t  "])),
    st.builds("{}: &a [1, *a]\n".format, _KNOWN),
    st.integers(4301, 20000).map(lambda n: "seed: " + "9" * n + "\n"),
)
_ALLOWED = st.lists(st.sampled_from(["log_every=1", "checkpoint.every=2", "device=cpu",
                                     "checkpoint.keep=3"]), max_size=2)
ISSUE19 = {
    "yaml override": st.one_of(_YAML_VALUES, st.sampled_from(
        ["optim.lr=[0.1", "name=*foo", "name=&a [*a]", "optim.lr=\t0.1", "seed=" + "[" * 5000,
         "seed=!!python/object/apply:os.system [x]", "optim.lr=" + "x" * 100_000])).map(
        lambda o: ["--out", "newrun", o]),
    "yaml file": YAML_DOCS,
    "numbers": st.one_of(
        st.floats(min_value=64.0001, allow_nan=False).map(lambda w: [f"model.width={w!r}"]),
        st.sampled_from([".inf", "-.inf", ".nan", "-1e-9", "0"]).map(
            lambda w: [f"model.width={w}"]),
        st.integers(201, 10**12).map(lambda n: [f"model.depth={6 * n + 2}"]),
        st.tuples(st.sampled_from([110, 218]), st.floats(25, 64)).map(  # > 10^9 parameters
            lambda dw: [f"model.depth={dw[0]}", f"model.width={dw[1]!r}"]),
        st.one_of(st.integers(min_value=2**64), st.integers(max_value=-1)).map(
            lambda s: [f"seed={s}"]),
        st.integers(1025, 10**9).map(lambda c: [f"data.crop_size={c}"]),
    ).map(lambda o: ["--out", "newrun", *o]),
    "resume": st.tuples(st.one_of(
        st.floats(1e-4, 10).filter(lambda x: x != 0.1).map("optim.lr={!r}".format),
        st.integers(1, 2**64 - 1).map("seed={}".format),
        st.floats(0, 0.99).filter(lambda x: x != 0.9).map("optim.momentum={!r}".format),
        st.floats(0, 1).filter(lambda x: x != 1e-4).map("optim.weight_decay={!r}".format),
        st.integers(1, 3).map("optim.iterations={}".format),  # the run is at 4
        st.lists(st.integers(1, 100), min_size=1, max_size=3, unique=True).map(
            lambda m: f"optim.lr_milestones={sorted(m)}"),
        st.sampled_from(["model.depth=14", "model.width=0.5", "data.flip=true",
                         "init_mode=continue", "adversarial.lam=0.5", "optim.name=rmsprop"]),
    ), _ALLOWED).map(lambda c: ["--out", "run", *c[1], c[0]]),
    "busy": _ALLOWED.map(lambda extra: ["--out", "busy", *extra]),
}


@pytest.mark.parametrize("kind", list(ISSUE19))
def test_hostile_values_of_issue_19_are_one_line_exit_2_and_change_nothing(work, kind,
                                                                          tmp_path_factory):
    files = tmp_path_factory.mktemp("configs")  # outside the work folder
    before = snapshot(work)
    name = f"train ({kind})"
    CASES[name] = 0

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(value=ISSUE19[kind])
    def case(value):
        if kind == "yaml file":
            path = files / f"{hashlib.sha256(value.encode()).hexdigest()[:16]}.yaml"
            path.write_text(value)
            argv = ["train", "--config", path, "--out", "newrun", "--quiet", *TINY]
        else:
            argv = ["train", "--config", CONFIG, "--quiet", *TINY, *value]
        CASES[name] += 1
        code, _, err = run(argv, work)
        assert code == 2, (argv, code, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert len(err) <= 2100, argv  # errors.MAX_LINE: no echoed document
        assert snapshot(work) == before, argv

    case()
    report = os.environ.get("CASCADE_ADV_FUZZ_REPORT")
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"command": name, "cases": CASES[name]}) + "\n")
