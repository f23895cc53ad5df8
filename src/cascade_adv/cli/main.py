"""``cascade-adv``: train, evaluate and attack image classifiers.

Every command calls library functions that the tests also call; user errors
(``CascadeAdvError``) print one line and exit with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from pathlib import Path

import click

# the research commands (transfer, analyze, report, reproduce) register on the same group
from cascade_adv.cli import reproduce, research  # noqa: F401
from cascade_adv.cli.common import (
    EPS,
    SEED,
    AttackNames,
    AuditVersion,
    EpsList,
    _apply,
    check_outputs,
    cli,
    model_data_options,
    save_results,
)
from cascade_adv.errors import CascadeAdvError, CascadeAdvWarning, one_line

EXAMPLES_TRAIN = """
\b
Examples:
  cascade-adv train --config configs/digits_baseline.yaml
  cascade-adv train --config configs/mnist_baseline.yaml --out runs/mnist_baseline \\
      data.root=../shared/data optim.iterations=500
"""

EXAMPLES_EVAL = """
\b
Examples:
  cascade-adv eval --checkpoint runs/mnist_baseline --attacks step_ll,step_fgsm,iter_ll,iter_fgsm \\
      --eps 16,32
  cascade-adv eval --checkpoint runs/cifar_baseline/final --eps 2,4,8,16 --limit 1000 \\
      --results results.db --csv table.csv
"""

EXAMPLES_ATTACK = """
\b
Examples:
  cascade-adv attack --checkpoint runs/mnist_baseline --attack iter_fgsm --eps 16,32 \\
      --out adv/mnist_iter_fgsm
  cascade-adv attack --checkpoint runs/cifar_pivot --attack iter_fgsm --eps 1,2,3,4 \\
      --split train --out adv/cifar_pivot_train
"""


FUSE = click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="Run attacks on the inference network with BatchNorm folded into the convolutions.",
)


def table_options(results_help: str, fuse: bool = False) -> list:
    """The options of a command that measures a table of one model: its results store,
    CSV / JSON copies, the model's name and the seed (and ``--fuse``)."""
    return [
        click.option("--results", type=click.Path(dir_okay=False),
                     default="results/results.db", show_default=True, help=results_help),
        click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None),
        click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None),
        click.option("--name", default=None,
                     help="Model name in tables (default: run folder name)."),
        click.option("--seed", type=SEED, default=0, show_default=True),
    ] + ([FUSE] if fuse else [])


def _is_config_dump(path: Path) -> bool:
    """True for the resolved config that ``train`` writes first into a run folder (every
    top-level key present), as opposed to a config file of the user's."""
    from cascade_adv.textdata import load_yaml
    from cascade_adv.training.config import TrainConfig

    try:  # ConfigError (a ValueError): not YAML, or past the limits of textdata
        tree = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError):
        return False
    return isinstance(tree, dict) and set(TrainConfig.model_fields) <= set(tree)


def check_train_out(run_dir: Path) -> None:
    """``train --out``: a missing or empty folder, or an earlier run folder; never a
    folder of the user's that merely exists."""
    from cascade_adv.errors import OutputPathError
    from cascade_adv.io import check_writable_dir

    check_writable_dir(run_dir, "--out folder")
    own = any((run_dir / n).exists() for n in ("checkpoints", "final", "metrics.jsonl")) \
        or _is_config_dump(run_dir / "config.yaml")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not own:
        raise OutputPathError(f"--out {run_dir} already exists and is not a run folder; "
                              "pass a new --out folder")


@cli.command(epilog=EXAMPLES_TRAIN)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="YAML training config (see configs/).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default: runs/<config name>).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the run folder's last checkpoint.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
def train(config_path, out, resume, quiet, overrides):
    """Train a model; KEY=VALUE arguments override config entries (e.g. optim.lr=0.05)."""
    from cascade_adv.training import load_config
    from cascade_adv.training import train as run_training
    from cascade_adv.training.distributed import env_rank
    from cascade_adv.training.runs import config_inputs

    cfg = load_config(config_path, overrides)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    check_outputs(dirs=[("--out", run_dir)], inputs=config_inputs(cfg, config_path))
    check_train_out(run_dir)
    result = run_training(cfg, run_dir, resume=resume, progress=not quiet)
    if env_rank() == 0 and result.resumed_from >= result.iterations:
        click.echo(f"{cfg.name} is already trained ({result.iterations} iterations); "
                   f"nothing to do -> {run_dir / 'final'}")
    elif env_rank() == 0:  # under torchrun, rank 0 reports
        click.echo(
            f"trained {cfg.name}: {result.iterations} iterations, final loss "
            f"{result.final_loss:.4f}, {result.seconds:.1f} s -> {run_dir / 'final'}"
        )


@cli.command(name="eval", epilog=EXAMPLES_EVAL)
@_apply(model_data_options())
@click.option(
    "--attacks",
    "names",
    type=AttackNames(clean=True),
    default="step_ll,step_fgsm,iter_ll,iter_fgsm",
    show_default=True,
    help="Comma-separated attack names (see 'cascade-adv attacks').",
)
@click.option(
    "--eps",
    "eps",
    type=EPS,
    default="16,32",
    show_default=True,
    help="Comma-separated epsilons in pixel units [0, 255].",
)
@_apply(table_options("SQLite results store (rows are upserted)."))
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bf16"]),
    default="auto",
    show_default=True,
    help="bf16 autocast (auto: on CUDA only) or float32 everywhere.",
)
@click.option(
    "--channels-last",
    type=click.Choice(["auto", "true", "false"]),
    default="auto",
    show_default=True,
    help="NHWC weights and images (auto: the model's on CUDA only; the attacks' folded "
    "network in the layout measured faster here, cached per machine and model shape).",
)
@click.option(
    "--compile/--no-compile",
    "compile_model",
    default=False,
    show_default=True,
    help="torch.compile the model's forward (checked before any work).",
)
@_apply([FUSE])
def evaluate(names, eps, results, csv_path, json_path, name, seed, batch_size,
             quiet, precision, channels_last, compile_model, fuse, **model_data):
    """White-box accuracy (top-1, top-5) of one model under attacks x epsilons."""
    from cascade_adv.evaluation import evaluate_whitebox
    from cascade_adv.speed import resolve_speed
    from cascade_adv.training import distributed
    from cascade_adv.training.runs import data_inputs, model_inputs

    ckpt = model_data["checkpoint"]
    check_outputs(files=[("--csv", csv_path), ("--json", json_path)], store=results,
                  inputs=[*model_inputs(ckpt, "--checkpoint"),
                          *data_inputs([ckpt], model_data["dataset"], model_data["data_root"])])
    # under torchrun every rank evaluates its shard of the images; rank 0 reports
    ctx = distributed.setup("auto", model_data["device"])
    model_data["device"] = str(ctx.device)
    try:
        # unsupported --precision / --compile: one line before the model is loaded
        resolve_speed(ctx.device, precision, channels_last, compile_model, via="cli")
        from cascade_adv.training.runs import load_for_eval

        run, data = load_for_eval(**model_data)
        run.name = name or run.name
        table = evaluate_whitebox(
            run.model,
            data,
            names,
            eps,
            batch_size=batch_size,
            seed=seed,
            model_name=run.name,
            model_hash=run.hash,
            progress=not quiet and ctx.is_main,
            precision=precision,
            channels_last=channels_last,
            compile=compile_model,
            fuse=fuse,
        )
    finally:
        ctx.close()
    if not ctx.is_main:
        return
    click.echo(table.to_markdown())
    # the files asked for first; the model's record carries the paper rows its config
    # names, for the reports
    save_results(table, results, [run.record()],
                 files=[(csv_path, table.to_csv), (json_path, table.to_json)])


EXAMPLES_AUDIT = """
\b
Examples:
  cascade-adv audit --checkpoint runs/mnist_baseline --eps 16,32,76.5
  cascade-adv audit --checkpoint runs/n18_mnist_pivot --eps 16,32 --version quick --limit 1000
  cascade-adv audit --checkpoint runs/digits_baseline --eps 8 \\
      --version pgd:restarts=5:steps=40,iter_ll --results results.db --csv audit.csv
  cascade-adv audit --checkpoint runs/n18_mnist_pivot --eps 16,32 --version quick \\
      --twin runs/mnist_baseline          # the transfer check from an undefended twin
  cascade-adv audit --checkpoint runs/mnist_baseline --eps 16 --no-checks
  cascade-adv audit --checkpoint runs/n18_mnist_pivot --eps 32 --version quick --limit 1000 \\
      --jobs 2                            # two single-thread worker processes, one per core
  cascade-adv audit --checkpoint runs/n18_mnist_pivot --eps 32 --jobs 16 --executor ray \\
      --ray-address auto                  # shards as Ray tasks on a running cluster
  cascade-adv audit --checkpoint runs/n18_mnist_pivot --eps 32 --version quick --compile
                                          # Square on the compiled model (a compile first)
"""


@cli.command(name="audit", epilog=EXAMPLES_AUDIT)
@_apply(model_data_options())
@click.option(
    "--eps",
    type=EpsList(positive=True),
    default="16,32",
    show_default=True,
    help="Comma-separated epsilons in pixel units (0, 255].",
)
@click.option(
    "--version",
    "version",
    type=AuditVersion(),
    default="standard",
    show_default=True,
    help="standard (AutoAttack's: APGD-CE, APGD-T and FAB-T with 9 targets, Square with "
    "5000 queries), quick (APGD-CE, APGD-T with 3 targets, Square with 1000 queries; "
    "for a CPU), or attacks in the "
    "order they run: NAME[:KEY=VALUE...] separated by commas.",
)
@click.option(
    "--checks/--no-checks",
    default=True,
    show_default=True,
    help="After the attacks, run the gradient-masking diagnostics (on a subsample of 256 "
    "images) and print each one's verdict.",
)
@click.option(
    "--twin",
    type=click.Path(),
    default=None,
    help="An undefended model of the same task (run folder or checkpoint): its attacks "
    "are transferred for the transfer check.",
)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the images into this many shards of whole batches, each audited in "
              "its own worker with the seeds of a one-process run (identical outcomes).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker when --jobs > 1 [default: 1].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="Where shards run: local worker processes, or Ray tasks (pip install "
              "'cascade-adv[ray]').")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (e.g. auto) [default: start a local instance].")
@click.option("--channels-last", type=click.Choice(["auto", "true", "false"]), default="auto",
              show_default=True,
              help="Layout of the attacked network (BatchNorm folded): auto is NHWC on CUDA "
              "and on a CPU the layout measured faster here (once per machine and model "
              "shape, cached); true / false pin it.")
@click.option("--compile/--no-compile", "compile_square", default=False, show_default=True,
              help="Square queries the model compiled with torch.compile's freezing (a "
              "compile of 10-60 s per worker; Square about 1.4x faster on a 2-core CPU; "
              "checked before any work).")
@_apply(table_options("SQLite results store (rows are upserted; progress is kept beside it to resume).", fuse=True))
def audit_command(eps, version, checks, twin, jobs, threads, executor, ray_address,
                  channels_last, compile_square, results,
                  csv_path, json_path, name, seed,
                  batch_size, quiet, fuse, checkpoint, dataset, data_root, split, device, limit):
    """Robustness audit: attacks in sequence, each on the images still classified
    correctly, and the per-image worst case (AutoAttack's protocol).

    Prints, per eps, the clean accuracy, each attack's cumulative accuracy and the worst
    case, then each gradient-masking diagnostic as holds, flagged or not run (a flagged
    one does not change the exit status, 0); stores the rows (docs/results-schema.md).
    An interrupted audit resumes where it stopped when rerun with the same arguments; a
    progress file that does not match them exactly is discarded with a one-line warning.
    Attack options (``NAME:KEY=VALUE``) are checked against their type and range (see
    ``cascade-adv attacks``) when the command line is parsed.
    """
    from cascade_adv.errors import InvalidArgument
    from cascade_adv.evaluation import audit, format_diagnostics, prepare_images
    from cascade_adv.evaluation.audit import (
        AuditRecord,
        AuditRun,
        Workers,
        check_workers,
        resolve_version,
    )
    from cascade_adv.evaluation.diagnostics import check_twin_pair
    from cascade_adv.speed import resolve_speed
    from cascade_adv.training.runs import (
        LoadedModel,
        data_inputs,
        load_split,
        model_inputs,
        resolve_device,
    )

    if twin and not checks:
        raise InvalidArgument("--twin is used by the diagnostics only; drop --no-checks or "
                              "--twin")
    check_outputs(files=[("--csv", csv_path), ("--json", json_path)], store=results,
                  inputs=[*model_inputs(checkpoint, "--checkpoint"),
                          *data_inputs([checkpoint], dataset, data_root),
                          *model_inputs(twin, "--twin")])
    dev = resolve_device(device)
    if compile_square:  # torch.compile works here, or one line naming the fix
        resolve_speed(dev, compile=True, via="cli")
    run = LoadedModel(checkpoint, dev)
    run.name = name or run.name
    resolve_version(version, run.model.config.num_classes)  # targets: before the data loads
    undefended = LoadedModel(twin, dev) if twin else None
    if undefended:  # another model of the same task, before the data loads
        check_twin_pair(run.model, undefended.model, model_name=run.name,
                        twin_name=f"--twin {twin}", model_hash=run.hash,
                        twin_hash=undefended.hash)
    if executor == "ray":  # Ray installed and its address answering, before the data loads
        from cascade_adv.executors import RayExecutor, require_ray

        require_ray()
        if ray_address:
            RayExecutor(ray_address).shutdown()
    data = load_split([run], dataset, data_root, split, limit, dev)
    workers = check_workers(Workers(jobs, executor, threads or 1, ray_address),
                            len(data.labels), batch_size)
    diagnostics = checks and ({"twin": undefended.model, "twin_name": undefended.name}
                              if undefended else True)
    result = audit(run.model, data.images, data.labels, eps, version=version,
                   prepare=functools.partial(prepare_images, run.model),
                   diagnostics=diagnostics,
                   run=AuditRun(batch_size=batch_size, seed=seed, fuse=fuse,
                                channels_last={"auto": None, "true": True,
                                               "false": False}[channels_last],
                                compile=compile_square, progress=not quiet,
                                workers=workers),
                   record=AuditRecord(store=results or None, save_rows=False,
                                      model_name=run.name, model_hash=run.hash,
                                      dataset=data.name, split=data.split))
    click.echo(result.to_markdown())
    if checks:
        click.echo(format_diagnostics(result.checks))
    # the files asked for first, then the rows and the model's record (with the paper rows
    # its config names, for the reports)
    table = result.table()
    save_results(table, results, [run.record()],
                 files=[(csv_path, table.to_csv), (json_path, table.to_json)])


def _write_set(attack_name, eps, out, seed, batch_size, quiet, overwrite, **model_data):
    """Shared body of ``attack`` and ``craft``: attack a split, save the set."""
    from cascade_adv.evaluation import craft_adversarial_set, prepare_images
    from cascade_adv.results.advsets import check_set_output
    from cascade_adv.training.runs import data_inputs, load_for_eval, model_inputs

    ckpt = model_data["checkpoint"]
    inputs = [*model_inputs(ckpt, "--checkpoint"),
              *data_inputs([ckpt], model_data["dataset"], model_data["data_root"])]
    check_outputs(dirs=[("--out", out)], inputs=inputs)
    check_set_output(out, overwrite=overwrite)

    run, data = load_for_eval(**model_data)
    path = craft_adversarial_set(
        run.model,
        data,
        out,
        attack_name,
        eps,
        prepare=lambda x: prepare_images(run.model, x),
        batch_size=batch_size,
        source_name=run.name,
        source_hash=run.hash,
        seed=seed,
        progress=not quiet,
        overwrite=overwrite,
        protect=[p for _, p in inputs],
    )
    click.echo(
        f"wrote {len(data) * len(eps)} {attack_name} images of {data.name}/{data.split} "
        f"(eps {', '.join(f'{e:g}' for e in eps)}) from {run.name} to {path}"
    )


@cli.command(epilog=EXAMPLES_ATTACK)
@_apply(model_data_options())
@click.option("--attack", "attack_name", type=AttackNames(single=True), required=True,
              help="Attack name.")
@click.option("--eps", type=EPS, required=True, help="Comma-separated epsilons [0, 255].")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the adversarial set to (an earlier set there is replaced).",
)
@click.option("--overwrite", is_flag=True,
              help="Replace --out even when it is not an earlier adversarial set.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def attack(**kwargs):
    """Write adversarial images of a split to disk (uint8 .npy + meta.json)."""
    _write_set(**kwargs)


EXAMPLES_CRAFT = """
\b
Examples:
  cascade-adv craft --checkpoint runs/n18_cifar10_P2 --out adv/n18_cifar10_P2_iter_fgsm_train
  cascade-adv craft --checkpoint runs/mnist_pivot --eps 1,2,4,8,16,32 --out adv/mnist_pivot
"""


@cli.command(epilog=EXAMPLES_CRAFT)
@_apply(model_data_options(split_default="train"))
@click.option("--attack", "attack_name", type=AttackNames(single=True), default="iter_fgsm",
              show_default=True)
@click.option(
    "--eps",
    "eps",
    type=EPS,
    default=",".join(str(e) for e in range(1, 17)),
    show_default=True,
    help="Comma-separated epsilons [0, 255].",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the set to; name it in adversarial.sources of a config.",
)
@click.option("--overwrite", is_flag=True,
              help="Replace --out even when it is not an earlier adversarial set.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def craft(**kwargs):
    """Save iter_FGSM images of the training split for cascade training (N18 section 6).

    The images are the model's inputs (center crops for CIFAR-10), attacked at
    every epsilon; cascade training draws from them with a random saved epsilon.
    """
    _write_set(**kwargs)


@cli.command(epilog="""
\b
Examples:
  cascade-adv quickstart
  cascade-adv quickstart --out runs/qs --results results/qs.db --quiet
""")
@click.option("--out", type=click.Path(file_okay=False), default="runs/quickstart",
              show_default=True, help="Folder for the runs and saved sets.")
@click.option("--results", type=click.Path(dir_okay=False), default="results/results.db",
              show_default=True, help="SQLite results store.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def quickstart(out, results, device, quiet):
    """Baseline, Kurakin's, Pivot and Pivot + cascade on the bundled digits, in minutes.

    Trains the four models from one pre-trained start, evaluates each white-box
    (step_ll, step_FGSM, iter_ll, iter_FGSM) and black-box (iter_FGSM from a
    separately trained network), prints one table and says what it shows.
    """
    from cascade_adv.experiments import quickstart as run_quickstart
    from cascade_adv.training import resolve_device

    check_outputs(dirs=[("--out", out)], store=results)
    resolve_device(device)
    result = run_quickstart(out, results, progress=not quiet, device=device)
    click.echo(result.table.to_markdown(sources_as_columns=True))
    click.echo(result.summary)
    click.echo(f"({result.seconds:.0f} s; rows stored in {results}; accuracy vs epsilon in "
               f"{result.figure})")


@cli.command(name="attacks")
def list_attacks():
    """List every registered attack with its formula and its options' ranges."""
    from cascade_adv import attacks

    for n in attacks.names():
        spec = attacks.get(n)
        opts = "; ".join(f"{k}: {limit.describe()}" for k, limit in spec.limits.items())
        click.echo(f"{n:15s} {spec.kind:9s} {spec.description}"
                   + (f"  [options: {opts}]" if opts else ""))


#: What rerunning an interrupted command does, by command (:func:`rerun_note`).
RERUN_NOTES = {
    "train": "rerun the same command to resume (training continues from its last "
             "checkpoint)",
    "reproduce": "rerun the same command to resume (finished steps are skipped, training "
                 "continues from its last checkpoint and an audit after its last finished "
                 "attack x batch)",
    "audit": "rerun the same command to resume (the audit skips the attack x batches it "
             "finished, whose progress is kept beside --results)",
}


def rerun_note(argv: list[str]) -> str:
    """What to do after Ctrl-C interrupted the command of ``argv`` (its first word that is
    not an option): resume it (``train``, ``reproduce``, ``audit``) or start it again."""
    command = next((str(a) for a in argv if not str(a).startswith("-")), "")
    return RERUN_NOTES.get(command, "rerun the same command to start it again")


@contextlib.contextmanager
def one_line_warnings():
    """Inside the block, a :class:`~cascade_adv.errors.CascadeAdvWarning` (something the
    library worked around, e.g. a damaged audit progress file it discarded) is printed
    as one line, ``warning: ...``, on stderr, each time it is raised; other warnings as
    Python prints them."""
    with warnings.catch_warnings():
        plain = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CascadeAdvWarning):
                click.echo(f"warning: {one_line(message)}", err=True)
            else:
                plain(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", CascadeAdvWarning)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> None:
    """Run the command line: user errors print one line on stderr and exit 2;
    an interrupted training run exits 130 (SIGINT) or 143 (SIGTERM)."""
    from cascade_adv.errors import TrainingInterrupted

    try:
        with one_line_warnings():
            rv = cli.main(args=argv, prog_name="cascade-adv", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(f"interrupted; {rerun_note(sys.argv[1:] if argv is None else argv)}",
                   err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {one_line(exc.format_message())}{where}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except TrainingInterrupted as exc:
        click.echo(f"{one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except CascadeAdvError as exc:
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(2)
    except OSError as exc:
        from cascade_adv.io import NO_SPACE_ERRNOS, NO_WRITE_ERRNOS

        if exc.errno not in NO_SPACE_ERRNOS | NO_WRITE_ERRNOS:
            raise
        # a write the library does not size (a metrics line): the file and the reason
        name = exc.filename or "a file"
        where = Path(exc.filename).parent if exc.filename else "its folder"
        fix = (f"free some space in {where}" if exc.errno in NO_SPACE_ERRNOS
               else f"make {where} writable (or pass another path)")
        click.echo(f"error: cannot write {name} ({exc.strerror}); {fix}, then run the command "
                   "again (training resumes from its last checkpoint)", err=True)
        sys.exit(2)
    if isinstance(rv, int) and rv:  # --help / --version return 0
        sys.exit(rv)


if __name__ == "__main__":
    main()
