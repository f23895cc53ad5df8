"""What the ``cascade-adv`` commands share: the click group, list and output checks, and
the model and data options (loading them is :mod:`cascade_adv.training.runs`)."""

from __future__ import annotations

import click

POSITIVE = click.IntRange(min=1)
#: ``--seed``: torch's generators take 64 bits
SEED = click.IntRange(0, 2**64 - 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cascade-adv")
def cli() -> None:
    """Adversarial training and robustness evaluation of image classifiers.

    Methods of Kurakin et al., "Adversarial Machine Learning at Scale" (ICLR 2017)
    and Na et al., "Cascade Adversarial Machine Learning Regularized with a
    Unified Embedding" (ICLR 2018). Epsilons are in pixel units of [0, 255].
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


class AttackNames(click.ParamType):
    """Comma-separated attack names, each registered (``clean`` too where ``clean``);
    ``single``: exactly one name; ``choices``: only these names.  Checked when the
    command line is parsed."""

    name = "attacks"

    def __init__(self, *, clean: bool = False, single: bool = False,
                 choices: tuple[str, ...] | None = None):
        self.clean, self.single, self.choices = clean, single, choices

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        from cascade_adv import attacks
        from cascade_adv.errors import CascadeAdvError, UnknownName

        option = param.opts[0] if param is not None else "--attacks"
        try:
            names = [str(value).strip()] if self.single else _csv_list(value, option=option)
            for n in names:
                if self.choices is not None and n not in self.choices:
                    raise UnknownName(f"{n!r} is not accepted here; choose from: "
                                      f"{', '.join(self.choices)}")
                if not (self.clean and n == "clean"):
                    attacks.get(n)
        except CascadeAdvError as exc:
            self.fail(str(exc), param, ctx)
        return names[0] if self.single else names


class EpsList(click.ParamType):
    """Comma-separated epsilons in pixel units of [0, 255] (duplicates dropped), checked
    by :func:`cascade_adv.attacks.validate_eps` when the command line is parsed;
    ``positive``: attack radii in (0, 255] (:func:`cascade_adv.evaluation.audit.check_audit_eps`)."""

    name = "eps"

    def __init__(self, *, positive: bool = False):
        self.positive = positive

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        from cascade_adv import attacks
        from cascade_adv.errors import CascadeAdvError
        from cascade_adv.evaluation.audit import check_audit_eps

        option = param.opts[0] if param is not None else "--eps"
        check = check_audit_eps if self.positive else attacks.validate_eps
        try:
            return check(_csv_list(value, float, option=option), option)
        except CascadeAdvError as exc:
            self.fail(str(exc), param, ctx)


class AuditVersion(click.ParamType):
    """``standard``, ``quick`` or comma-separated ``NAME[:KEY=VALUE...]`` attacks, checked
    by :func:`cascade_adv.evaluation.audit.resolve_version` when the command line is
    parsed (the targets against the model's classes once it is loaded)."""

    name = "version"

    def convert(self, value, param, ctx):
        from cascade_adv.errors import CascadeAdvError
        from cascade_adv.evaluation.audit import resolve_version

        try:
            resolve_version(str(value))
        except CascadeAdvError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


ATTACKS = AttackNames()
EPS = EpsList()


def check_outputs(files=(), dirs=(), store=None, inputs=(), written=()) -> None:
    """Every command's output paths, checked before any work (one line each): none of
    the outputs (``(option, path)`` pairs: ``files``, ``dirs``, and ``written``, which
    the command checks otherwise) is, holds or lies inside an input of the command
    (``inputs``, and the results ``store``, which is read and updated in place) or
    another of its outputs, symlinks followed (:func:`cascade_adv.io.check_disjoint`;
    ``--overwrite`` does not lift it); the store is an undamaged cascade-adv store;
    every file and folder can be written."""
    from cascade_adv.io import check_disjoint, check_writable_dir, check_writable_file
    from cascade_adv.results.store import check_store_path

    check_disjoint([*files, *dirs, *written],
                   [*([("--results", store)] if store else []), *inputs])
    if store:
        check_store_path(store)
    for opt, path in files:
        if path:
            check_writable_file(path, opt)
    for opt, path in dirs:
        if path:
            check_writable_dir(path, opt)


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


def save_results(table, results, models=(), files=()) -> None:
    """Deliver a command's rows: first the files the user asked for (``files``:
    ``(path, writer)`` pairs such as ``(csv_path, table.to_csv)``), then the rows and the
    ``models`` records into the results store.  A store that cannot be written keeps
    the rows in a pending file (:func:`cascade_adv.results.store.store_rows`); a file
    that cannot be written (full disk) does not stop the others.  Raises one
    :class:`~cascade_adv.errors.CascadeAdvError` naming every failure."""
    from cascade_adv.errors import CascadeAdvError, one_line
    from cascade_adv.results.store import store_rows

    failed = []
    for path, write in files:
        if path:
            try:
                write(path)
            except CascadeAdvError as exc:  # DiskFull: the store may still take the rows
                failed.append(one_line(exc))
    stored = ""
    if results:
        try:
            store_rows(results, table, models)
            stored = f" (the rows are stored in {results})" if failed else ""
        except CascadeAdvError as exc:
            failed.append(one_line(exc))
    if failed:
        raise CascadeAdvError("; ".join(failed) + stored)
