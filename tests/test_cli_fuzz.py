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
    from cascade_adv.training import load_config, train

    work = tmp_path_factory.mktemp("fuzz")
    train(load_config(CONFIG, TINY), work / "run", progress=False)
    (work / "notes.txt").write_text("a user's file\n")
    (work / "userdir").mkdir()
    (work / "userdir" / "paper.tex").write_text("years of work\n")
    (work / "emptydir").mkdir()
    (work / "fake.safetensors").write_text("not weights")
    for name, text in {"empty.yaml": "", "comments.yaml": "# nothing\n",
                       "list.yaml": "- a\n- b\n", "syntax.yaml": "optim: [1,\n",
                       "unknown.yaml": "optim:\n  nope: 1\n", "wrongtype.yaml": "optim:\n  lr: abc\n",
                       "scalar.yaml": "42\n", "cycle.yaml": "extends: cycle.yaml\nseed: 1\n"}.items():
        (work / name).write_text(text)
    (work / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    assert run(["eval", "--checkpoint", "run", "--limit", "8", "--attacks", "step_ll", "--eps",
                "4", "--quiet", "--results", "store.db"], work)[0] == 0
    return work


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
SET_OUT = st.sampled_from([".", "..", "run", "run/final", "userdir", "notes.txt",
                           "notes.txt/sub", "/proc/adv"])
DIR_OUT = st.sampled_from(["notes.txt", "notes.txt/sub", "/proc/x"])
CONFIGS = st.sampled_from(["missing.yaml", "bin.yaml", "empty.yaml", "comments.yaml",
                           "list.yaml", "syntax.yaml", "unknown.yaml", "wrongtype.yaml",
                           "scalar.yaml", "cycle.yaml", "userdir"])
_KEYS = ("name", "seed", "init_from", "device", "log_every", "data", "model", "optim",
         "checkpoint", "adversarial", "distributed", "speed", "extends")
_BAD_OVERRIDES = st.sampled_from(["noeq", "=1", "optim=3", "optim.lr=-1", "optim.iterations=0",
                     "name=../x", "name=/abs", "name=a/../../b", "device=foo", "model.depth=9",
                     "data.dataset=svhn", "optim.lr_milestones=[5, 2]", "seed=abc",
                     "adversarial.mode=sideways", "data.crop_size=100", "init_from=notes.txt",
                     "optim.batch_size=100000", "adversarial.max_e=300", "optim.lr=nan_"]
                    + ([] if CUDA else ["device=cuda"]))
OVERRIDES = st.one_of(
    _BAD_OVERRIDES, _BAD_OVERRIDES,  # twice the weight of the generated keys
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}=[a-z0-9]{0,4}", fullmatch=True).filter(
        lambda s: s.split(".")[0].split("=")[0] not in _KEYS),
)
UNKNOWN = st.sampled_from(["--nope", "--limit", "--eps=", "-x", "extra_argument"])


COMMON_MODEL = {"--limit": ints_not_positive(), "--batch-size": ints_not_positive(),
                "--device": DEVICES, "--dataset": DATASETS, "--checkpoint": CHECKPOINTS,
                "?": UNKNOWN, "--split": st.sampled_from(["val", "", "TRAIN"]),
                "--seed": st.sampled_from(["abc", "1.5", ""])}
ANALYSIS = {"--limit": ints_not_positive(), "--batch-size": ints_not_positive(),
            "--device": DEVICES, "--dataset": DATASETS, "--results": RESULTS, "?": UNKNOWN,
            "--model": st.sampled_from(["missing_run", "fake.safetensors", "../x=run",
                                        "a/b=run", "notes.txt"]),
            "--eps": EPS, "--images": ints_not_positive(), "--figure": FILE_OUT}
SWEEP = {"--config": CONFIGS, "@override": OVERRIDES, "--limit": ints_not_positive(),
         "--batch-size": ints_not_positive(), "--results": RESULTS, "--eps": EPS,
         "--attacks": ATTACKS, "--out": DIR_OUT, "--figure": FILE_OUT, "?": UNKNOWN}
SWEEP_BASE = ["--config", CONFIG, "--limit", "8", "--attacks", "step_ll", "--eps", "4",
              "--quiet", "--results", "r.db", *TINY]

COMMANDS = {
    "train": (["train", "--config", CONFIG, "--out", "newrun", "--quiet", *TINY],
              {"--config": CONFIGS, "@override": OVERRIDES, "--out": DIR_OUT, "?": UNKNOWN}),
    "eval": (["eval", "--checkpoint", "run", "--limit", "8", "--attacks", "step_ll", "--eps",
              "4", "--quiet", "--results", "r.db"],
             {**COMMON_MODEL, "--eps": EPS, "--attacks": ATTACKS, "--results": RESULTS,
              "--csv": FILE_OUT, "--json": FILE_OUT,
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
                  "--dataset": DATASETS, "--results": RESULTS, "--csv": FILE_OUT,
                  "--sets": DIR_OUT, "?": UNKNOWN}),
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
                              "--figure-dir": DIR_OUT, "--sets": DIR_OUT, "?": UNKNOWN}),
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
                   {"--out": DIR_OUT, "--results": RESULTS, "--device": DEVICES,
                    "?": st.sampled_from(["--nope", "extra_argument", "--out"])}),
    "attacks": (["attacks"], {"?": st.sampled_from(["--nope", "extra", "-x"])}),
    "(top level)": ([], {"?": st.sampled_from(["nope", "--nope", "evaluate", "train2"])}),
}
#: generated cases per command, filled in as the tests run (reported in docs/reliability.md)
CASES: dict[str, int] = {}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(work, command):
    base, options = COMMANDS[command]
    before = snapshot(work)
    CASES[command] = 0
    names = sorted(options)

    # half the cases one malformed argument (so that no earlier check hides a later
    # one), half two or three together
    single = st.sampled_from(names).map(lambda k: [k])
    several = st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(keys=st.one_of(single, several) if len(names) > 1 else single, data=st.data())
    def case(keys, data):
        argv = list(base)
        overrides = []
        for key in keys:
            value = data.draw(options[key], label=key)
            if key == "@override":
                overrides.append(value)
            elif key == "?":
                argv.append(value)
            else:
                argv += [key, value]
        argv += overrides  # KEY=VALUE arguments after the options
        CASES[command] += 1
        code, _, err = run(argv, work)
        assert code == 2, (argv, code, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert snapshot(work) == before, argv

    case()
    assert CASES[command] >= 1
    report = os.environ.get("CASCADE_ADV_FUZZ_REPORT")  # docs/reliability.md's counts
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"command": command, "cases": CASES[command]}) + "\n")
