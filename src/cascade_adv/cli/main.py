"""``cascade-adv``: train, evaluate and attack image classifiers.

Every command calls library functions that the tests also call; user errors
(``CascadeAdvError``) print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cascade_adv.errors import CascadeAdvError

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


def _csv_list(value: str, cast=str, option: str = "the list") -> list:
    """A non-empty comma-separated list; raises :class:`InvalidArgument` (one line)."""
    from cascade_adv.errors import InvalidArgument

    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        example = "1,2" if cast in (int, float) else "a,b"
        raise InvalidArgument(f"{option} is empty ({value!r}); give at least one value, "
                              f"e.g. {option} {example}")
    try:
        return [cast(v) for v in items]
    except ValueError:
        kind = "numbers" if cast is float else "integers" if cast is int else "values"
        raise InvalidArgument(f"{option} {value!r} is not a comma-separated list of {kind}; "
                              "write e.g. 4,8,16") from None


def check_outputs(files=(), dirs=(), store=None) -> None:
    """Output paths checked before any work (one line each when not writable)."""
    from cascade_adv.io import check_writable_dir, check_writable_file
    from cascade_adv.results.store import check_store_path

    if store:
        check_store_path(store)
    for opt, path in files:
        if path:
            check_writable_file(path, opt)
    for opt, path in dirs:
        if path:
            check_writable_dir(path, opt)


def _is_config_dump(path: Path) -> bool:
    """True for the resolved config that ``train`` writes first into a run folder (every
    top-level key present), as opposed to a config file of the user's."""
    import yaml

    from cascade_adv.training.config import TrainConfig

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
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


POSITIVE = click.IntRange(min=1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cascade-adv")
def cli() -> None:
    """Adversarial training and robustness evaluation of image classifiers.

    Methods of Kurakin et al., "Adversarial Machine Learning at Scale" (ICLR 2017)
    and Na et al., "Cascade Adversarial Machine Learning Regularized with a
    Unified Embedding" (ICLR 2018). Epsilons are in pixel units of [0, 255].
    """


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

    cfg = load_config(config_path, overrides)
    run_dir = Path(out) if out else Path("runs") / cfg.name
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


def model_init(weights: Path) -> str:
    """The model's initialisation id: from its metadata, else from its run's config."""
    from cascade_adv.models import read_model_config, read_model_init
    from cascade_adv.training import init_id

    init = read_model_init(weights)
    if init:
        return init
    run_cfg = _run_config(weights)
    if run_cfg is None:
        return ""
    return init_id(run_cfg.init_from, run_cfg.seed, read_model_config(weights))


class LoadedModel:
    """A model given on the command line, with what the store records about it."""

    def __init__(self, spec: str, device):
        from cascade_adv.models import load_model, resolve_weights, weights_hash

        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        check_name(name, "model name")
        self.weights = resolve_weights(path)
        self.name = name or _model_label(self.weights)
        self.model = load_model(self.weights, map_location=device)
        check_finite_model(self.model, self.weights)
        self.hash = weights_hash(self.weights)
        self.init = model_init(self.weights)
        self.run_config = _run_config(self.weights)

    @property
    def dataset(self) -> str:
        cfg_name = self.model.config.dataset
        return cfg_name or (self.run_config.data.dataset if self.run_config else "")

    def register(self, store, experiment: str = "", params: dict | None = None) -> None:
        store.register_model(self.name, model_hash=self.hash, dataset=self.dataset,
                             init=self.init, experiment=experiment, params=params)


def check_name(name: str, what: str) -> str:
    """A name that becomes part of a file name: no folder separators, no ``..``."""
    from cascade_adv.errors import InvalidArgument

    if name and ("/" in name or "\\" in name or name in (".", "..") or "\0" in name):
        raise InvalidArgument(f"{what} {name!r} may not contain '/', '\\' or be '.' / '..'; "
                              "use a plain name such as B1")
    return name


def check_finite_model(model, weights) -> None:
    """Refuse (one line) a model whose weights or statistics hold inf / NaN."""
    from cascade_adv.errors import ModelFault
    from cascade_adv.training.checkpoint import nonfinite_state

    bad = nonfinite_state(model)
    if bad:
        raise ModelFault(f"model {weights} holds non-finite weights ({len(bad)} tensors, first "
                         f"{bad[0]}); it is damaged: evaluate an earlier checkpoint or retrain")


def load_models(specs: tuple[str, ...], device) -> dict[str, LoadedModel]:
    """``NAME=PATH`` or ``PATH`` (named after its run folder) -> loaded models."""
    out: dict[str, LoadedModel] = {}
    for spec in specs:
        m = LoadedModel(spec, device)
        if m.name in out and out[m.name].weights != m.weights:
            raise CascadeAdvError(
                f"two models are named {m.name!r}; name them with NAME=PATH")
        out[m.name] = m
    return out


def load_split(models: list[LoadedModel], dataset: str | None, data_root: str | None,
               split: str, limit: int | None, device):
    """The evaluation images: ``dataset`` or the one every model was trained on."""
    from cascade_adv.data import load_dataset
    from cascade_adv.errors import InvalidArgument

    if limit is not None and limit < 1:
        raise InvalidArgument(f"--limit must be a positive number of images, got {limit}")
    names = {m.dataset for m in models if m.dataset}
    if dataset is None:
        if len(names) > 1:
            raise CascadeAdvError(
                f"the models were trained on different datasets ({', '.join(sorted(names))}); "
                "black-box pairs must share one"
            )
        if not names:
            raise CascadeAdvError(
                f"cannot tell which dataset {', '.join(m.name for m in models)} was "
                "trained on; pass --dataset")
        dataset = names.pop()
    for m in models:  # before any data is read
        if m.dataset and dataset != m.dataset:
            from cascade_adv.errors import DatasetError

            raise DatasetError(f"model {m.name} was trained on {m.dataset}, not {dataset}; "
                               f"evaluate it on --dataset {m.dataset}")
    root = data_root or next((m.run_config.data.root for m in models if m.run_config), None)
    first = models[0] if models else None
    size = _size_option(dataset, first.model.config, first.run_config) if first else {}
    data = load_dataset(dataset, split, root=root, **size)
    for m in models:
        check_model_data(m, data)
    return (data.subset(limit) if limit is not None else data).to(device)


def check_model_data(m: LoadedModel, data) -> None:
    """The dataset must be the one the model was made for: same dataset (when the
    model records it), channels, enough classes, images at least the model's size."""
    from cascade_adv.errors import DatasetError

    cfg = m.model.config
    if m.dataset and data.name != m.dataset:
        raise DatasetError(f"model {m.name} was trained on {m.dataset}, not {data.name}; "
                           f"evaluate it on --dataset {m.dataset}")
    c, h, w = data.image_shape
    if c != cfg.in_channels or h < cfg.input_size or w < cfg.input_size:
        raise DatasetError(f"{data.name} images are {c}x{h}x{w} but model {m.name} takes "
                           f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}; use the "
                           "dataset it was trained on")
    if data.num_classes > cfg.num_classes:
        raise DatasetError(f"{data.name} has {data.num_classes} classes but model {m.name} "
                           f"predicts {cfg.num_classes}; use the dataset it was trained on")


def _load_for_eval(
    checkpoint: str,
    dataset: str | None,
    data_root: str | None,
    split: str,
    device: str,
    limit: int | None,
):
    """Model, its name and hash, and the evaluation split it was trained for."""
    from cascade_adv.training import resolve_device

    dev = resolve_device(device)
    m = LoadedModel(checkpoint, dev)
    return m.model, m.name, m.hash, load_split([m], dataset, data_root, split, limit, dev)


def _size_option(name: str, model_config, run_cfg) -> dict:
    """``{"image_size": S}`` for ImageNet folders: the size the model's run decoded its
    training images at, else the model's input size; ``{}`` for the other datasets."""
    if name != "imagenet":
        return {}
    from cascade_adv.data.imagefolder import DEFAULT_IMAGE_SIZE

    if run_cfg is not None and run_cfg.data.dataset == "imagenet":
        return {"image_size": run_cfg.data.image_size or DEFAULT_IMAGE_SIZE}
    return {"image_size": model_config.input_size}


def _run_config(weights: Path):
    from cascade_adv.training import load_config

    for folder in (weights.parent, weights.parent.parent, weights.parent.parent.parent):
        if (folder / "config.yaml").is_file():
            return load_config(folder / "config.yaml")
    return None


def _model_label(weights: Path) -> str:
    """A readable model name: the run folder's name."""
    folder = weights.parent
    while folder.name in {"final", "checkpoints"} or folder.name.startswith("ckpt-"):
        folder = folder.parent
    return folder.name


def model_data_options(split_default: str = "test") -> list:
    """Options shared by the commands that load a model and a dataset split."""
    return [
        click.option(
            "--checkpoint",
            required=True,
            type=click.Path(),
            help="Run folder, checkpoint folder or .safetensors file.",
        ),
        click.option(
            "--dataset",
            type=click.Choice(["digits", "mnist", "cifar10", "imagenet"]),
            default=None,
            help="Dataset (default: the one the model was trained on).",
        ),
        click.option(
            "--data-root",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder with the dataset files (default: $CASCADE_ADV_DATA or ./data).",
        ),
        click.option(
            "--split",
            type=click.Choice(["train", "test"]),
            default=split_default,
            show_default=True,
        ),
        click.option("--limit", type=POSITIVE, default=None,
                     help="Use only the first N images."),
        click.option("--batch-size", type=POSITIVE, default=500, show_default=True),
        click.option(
            "--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, auto."
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]


def _apply(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


@cli.command(name="eval", epilog=EXAMPLES_EVAL)
@_apply(model_data_options())
@click.option(
    "--attacks",
    "attack_names",
    default="step_ll,step_fgsm,iter_ll,iter_fgsm",
    show_default=True,
    help="Comma-separated attack names (see 'cascade-adv attacks').",
)
@click.option(
    "--eps",
    "eps_list",
    default="16,32",
    show_default=True,
    help="Comma-separated epsilons in pixel units [0, 255].",
)
@click.option(
    "--results",
    type=click.Path(dir_okay=False),
    default="results/results.db",
    show_default=True,
    help="SQLite results store (rows are upserted).",
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--name", default=None, help="Model name in tables (default: run folder name).")
@click.option("--seed", type=int, default=0, show_default=True)
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
    help="NHWC weights and images (auto: on CUDA only).",
)
@click.option(
    "--compile/--no-compile",
    "compile_model",
    default=False,
    show_default=True,
    help="torch.compile the model's forward (checked before any work).",
)
@click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="Run attacks on the inference network with BatchNorm folded into the convolutions.",
)
def evaluate(attack_names, eps_list, results, csv_path, json_path, name, seed, batch_size,
             quiet, precision, channels_last, compile_model, fuse, **model_data):
    """White-box accuracy (top-1, top-5) of one model under attacks x epsilons."""
    from cascade_adv import attacks
    from cascade_adv.evaluation import ResultsStore, evaluate_whitebox
    from cascade_adv.speed import resolve_speed
    from cascade_adv.training import distributed

    names = _csv_list(attack_names, option="--attacks")
    eps = _csv_list(eps_list, float, option="--eps")
    for a in names:
        if a != "clean":
            attacks.get(a)
    attacks.validate_eps(eps)
    check_outputs(files=[("--csv", csv_path), ("--json", json_path)], store=results)
    # under torchrun every rank evaluates its shard of the images; rank 0 reports
    ctx = distributed.setup("auto", model_data["device"])
    model_data["device"] = str(ctx.device)
    try:
        # unsupported --precision / --compile: one line before the model is loaded
        resolve_speed(ctx.device, precision, channels_last, compile_model, via="cli")
        model, label, digest, data = _load_for_eval(**model_data)
        table = evaluate_whitebox(
            model,
            data,
            names,
            eps,
            batch_size=batch_size,
            seed=seed,
            model_name=name or label,
            model_hash=digest,
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
    if results:
        with ResultsStore(results) as store:
            store.upsert(table)
    if csv_path:
        table.to_csv(csv_path)
    if json_path:
        table.to_json(json_path)


def _write_set(attack_name, eps_list, out, seed, batch_size, quiet, overwrite, **model_data):
    """Shared body of ``attack`` and ``craft``: attack a split, save the set."""
    from cascade_adv import attacks
    from cascade_adv.evaluation import craft_adversarial_set, prepare_images
    from cascade_adv.results.advsets import check_set_output

    attacks.get(attack_name)
    eps = attacks.validate_eps(_csv_list(eps_list, float, option="--eps"))
    checkpoint = Path(model_data["checkpoint"])
    protect = [checkpoint, model_data.get("data_root")]
    try:
        from cascade_adv.models import resolve_weights

        weights = resolve_weights(checkpoint)
        protect += [weights, weights.parent.parent if weights.parent.name == "final" else
                    weights.parent]
    except CascadeAdvError:
        pass  # reported by the model loader below
    check_set_output(out, overwrite=overwrite, protect=protect)
    model, label, digest, data = _load_for_eval(**model_data)
    path = craft_adversarial_set(
        model,
        data,
        out,
        attack_name,
        eps,
        prepare=lambda x: prepare_images(model, x),
        batch_size=batch_size,
        source_name=label,
        source_hash=digest,
        seed=seed,
        progress=not quiet,
        overwrite=overwrite,
        protect=protect,
    )
    click.echo(
        f"wrote {len(data) * len(eps)} {attack_name} images of {data.name}/{data.split} "
        f"(eps {', '.join(f'{e:g}' for e in eps)}) from {label} to {path}"
    )


@cli.command(epilog=EXAMPLES_ATTACK)
@_apply(model_data_options())
@click.option("--attack", "attack_name", required=True, help="Attack name.")
@click.option("--eps", "eps_list", required=True, help="Comma-separated epsilons [0, 255].")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the adversarial set to (an earlier set there is replaced).",
)
@click.option("--overwrite", is_flag=True,
              help="Replace --out even when it is not an earlier adversarial set.")
@click.option("--seed", type=int, default=0, show_default=True)
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
@click.option("--attack", "attack_name", default="iter_fgsm", show_default=True)
@click.option(
    "--eps",
    "eps_list",
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
@click.option("--seed", type=int, default=0, show_default=True)
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
    click.echo(f"({result.seconds:.0f} s; rows stored in {results})")


@cli.command(name="attacks")
def list_attacks():
    """List every registered attack with its formula."""
    from cascade_adv import attacks

    for n in attacks.names():
        spec = attacks.get(n)
        opts = (
            f"  [options: {', '.join(o for o in spec.options if o != 'generator')}]"
            if len(spec.options) > 1
            else ""
        )
        click.echo(f"{n:15s} {spec.kind:9s} {spec.description}{opts}")


# The research commands (transfer, analyze, report) live in their own module.
from cascade_adv.cli import research  # noqa: F401


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Run the command line: user errors print one line on stderr and exit 2;
    an interrupted training run exits 130 (SIGINT) or 143 (SIGTERM)."""
    from cascade_adv.errors import TrainingInterrupted

    try:
        rv = cli.main(args=argv, prog_name="cascade-adv", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted; rerun the same command to resume (training continues from "
                   "its last checkpoint)", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {_one_line(exc.format_message())}{where}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except TrainingInterrupted as exc:
        click.echo(f"{_one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except CascadeAdvError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    if isinstance(rv, int) and rv:  # --help / --version return 0
        sys.exit(rv)


if __name__ == "__main__":
    # run the canonical module's main: the research commands register on its ``cli``
    from cascade_adv.cli.main import main as _main

    _main()
