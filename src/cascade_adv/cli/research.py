"""Commands for black-box transfer, the papers' analyses and reports.

Registered on the ``cascade-adv`` group by :mod:`cascade_adv.cli.main`; each one
only parses options and calls library functions.
"""

from __future__ import annotations

from pathlib import Path

import click

from cascade_adv.cli.common import (
    ATTACKS,
    EPS,
    POSITIVE,
    SEED,
    AttackNames,
    EpsList,
    _csv_list,
    check_outputs,
    cli,
    save_results,
)
from cascade_adv.errors import CascadeAdvError


def common_options(fn):
    """Dataset, device and output options shared by the commands below."""
    options = [
        click.option("--dataset", type=click.Choice(["digits", "mnist", "cifar10", "imagenet"]),
                     default=None, help="Dataset (default: the one the models were trained on)."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Folder with the dataset files (default: $CASCADE_ADV_DATA or ./data)."),
        click.option("--limit", type=POSITIVE, default=None,
                     help="Use only the first N test images."),
        click.option("--batch-size", type=POSITIVE, default=500, show_default=True),
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:1, auto."),
        click.option("--results", type=click.Path(dir_okay=False),
                     default="results/results.db", show_default=True,
                     help="SQLite results store (rows are upserted)."),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


EXAMPLES_TRANSFER = """
\b
Examples:
  # N18 table 4: targets B1, K1, P1; sources B2, K2, P2 (different initialisation)
  cascade-adv transfer --source B2=runs/B2 --source K2=runs/K2 --source P2=runs/P2 \\
      --target B1=runs/B1 --target K1=runs/K1 --target P1=runs/P1 \\
      --attacks step_fgsm,iter_ll,iter_fgsm --eps 16
  # K17 figure 2: transfer rate vs epsilon between two models, keeping the sets
  cascade-adv transfer --source A=runs/a --target B=runs/b --attacks step_fgsm \\
      --eps 2,4,8,16 --sets adv_sets --limit 1000
"""


@cli.command(epilog=EXAMPLES_TRANSFER)
@click.option("--source", "sources", multiple=True, required=True,
              help="Source model NAME=PATH (or PATH); repeat for several.")
@click.option("--target", "targets", multiple=True, required=True,
              help="Target model NAME=PATH (or PATH); repeat for several.")
@click.option("--attacks", "names", type=ATTACKS, default="step_fgsm,iter_fgsm", show_default=True,
              help="Comma-separated attacks crafted on each source.")
@click.option("--eps", type=EPS, default="16", show_default=True,
              help="Comma-separated epsilons in pixel units [0, 255].")
@click.option("--sets", "sets_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the crafted sets here and reuse them when the weights match.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None)
@common_options
def transfer(sources, targets, names, eps, sets_dir, csv_path, dataset, data_root,
             limit, batch_size, device, results, seed, quiet):
    """Black-box matrices: accuracy, error rate and transfer rate, source x target.

    Each source attacks the test images once per attack; every target (and the
    source itself, for the diagonal) is evaluated on those images. Rows go to
    the results store with source = the source model's name; every model is
    registered with its initialisation, so reports mark same-initialisation pairs.
    """
    from cascade_adv.evaluation import transfer_matrix
    from cascade_adv.results.tables import ResultTable
    from cascade_adv.training import resolve_device
    from cascade_adv.training.runs import load_models, load_split
    check_outputs(files=[("--csv", csv_path)], dirs=[("--sets", sets_dir)], store=results,
                  inputs=_models_inputs(("--source", sources), ("--target", targets),
                                        dataset=dataset, data_root=data_root))
    dev = resolve_device(device)
    src = load_models(sources, dev)
    tgt = load_models(targets, dev)
    for name in set(src) & set(tgt):
        if src[name].weights != tgt[name].weights:
            raise CascadeAdvError(f"source and target are both named {name!r} but are "
                                  "different models; name them apart with NAME=PATH")
    everyone = {**src, **tgt}
    data = load_split(list(everyone.values()), dataset, data_root, "test", limit, dev)
    table = transfer_matrix(
        {n: m.model for n, m in src.items()}, {n: m.model for n, m in tgt.items()}, data,
        names, eps, hashes={n: m.hash for n, m in everyone.items()}, sets_dir=sets_dir,
        batch_size=batch_size, seed=seed, progress=not quiet,
    )
    def same(a, b):  # the same known initialisation, as the store would tell
        return bool(everyone[a].init) and everyone[a].init == everyone[b].init

    for metric in ("top1", "transfer_top1", "error_top1"):
        click.echo(f"\n{metric}:")
        click.echo(_matrix_text(ResultTable(table.filter(metric=metric)), names, same))
    save_results(table, results, [m.record() for m in everyone.values()],
                 files=[(csv_path, table.to_csv)])


def _models_inputs(*options, dataset=None, data_root=None) -> list:
    """The inputs of the commands that load models (``(option, specs)`` pairs): each
    model's path, weights and run folder, and the dataset folder."""
    from cascade_adv.training.runs import data_inputs, model_inputs

    specs = [(opt, spec) for opt, group in options for spec in group]
    return [p for opt, spec in specs for p in model_inputs(spec, opt)] + data_inputs(
        [spec for _, spec in specs], dataset, data_root)


def _matrix_text(table, attacks, same_init) -> str:
    from cascade_adv.reporting.paper_tables import render_blackbox

    eps = sorted({r["eps"] for r in table})
    metric = next(iter(table)).get("metric", "top1") if len(table) else "top1"
    return "\n".join(render_blackbox(table, attack=attacks, eps=e, metric=metric,
                                     same_init=same_init, fmt="markdown") for e in eps)


# --- cascade-adv analyze NAME ------------------------------------------------------------

EXAMPLES_ANALYZE = """
\b
Examples:
  cascade-adv analyze softmax --model B=runs/B1 --model K=runs/K1 --model P=runs/P1
  cascade-adv analyze softmax --model K=runs/K1 --method step_ll --method iter_fgsm \\
      --method apgd_ce --apgd-steps 20 --images 16   # what the attacks see vs the audit
  cascade-adv analyze gradcorr --model B=runs/B1 --model K=runs/K1 --model P=runs/P1
  cascade-adv analyze indicators --model P=runs/P1 --eps 16,32 --twin runs/B1
  cascade-adv analyze indicators --model P=runs/P1 --eps 32 --attack iter_fgsm \\
      --attack apgd_t:targets=3 --images 256   # why attacks fail (Pintor et al. 2022)
  cascade-adv analyze transfer-eps --source A=runs/a --target B=runs/b --limit 1000
  cascade-adv analyze lambda2 --config configs/n18/table1_mnist_pivot.yaml \\
      --values 0,1e-4,1e-3,1e-2,0.1 --out runs/lambda2
  cascade-adv analyze capacity --config configs/k17/table1_cifar10_step_ll.yaml \\
      --widths 0.5,1,2 --out runs/capacity
  cascade-adv analyze activations --config configs/k17/table1_cifar10_step_ll.yaml
  cascade-adv analyze label-leaking --config configs/k17/table1_cifar10_step_ll.yaml
  cascade-adv analyze seeds --config configs/n18/table1_mnist_pivot.yaml --seeds 1,2,3,4,5
"""


@cli.group(epilog=EXAMPLES_ANALYZE)
def analyze():
    """The papers' analyses: each stores its rows, most also draw a figure (PNG)."""


def _figure_option(default: str):
    return click.option("--figure", type=click.Path(dir_okay=False), default=default,
                        show_default=True, help="Where to write the PNG figure.")


def _model_analysis(kind, models, eps, images, figure, dataset, data_root, limit,
                    batch_size, device, results, seed, quiet, views_figure=None, **kw):
    """Shared body of ``softmax`` and ``gradcorr``: run on every model, store, plot
    (``views_figure``: also :func:`~cascade_adv.reporting.figures.plot_attack_views`)."""
    from cascade_adv import analysis
    from cascade_adv.reporting import figures
    from cascade_adv.results.tables import ResultTable
    from cascade_adv.training import resolve_device
    from cascade_adv.training.runs import load_models, load_split

    outputs = [("--figure", figure)] + ([("--views-figure", views_figure)]
                                         if views_figure else [])
    check_outputs(files=outputs, store=results,
                  inputs=_models_inputs(("--model", models), dataset=dataset,
                                        data_root=data_root))
    dev = resolve_device(device)
    loaded = load_models(models, dev)
    data = load_split(list(loaded.values()), dataset, data_root, "test", limit, dev)
    run = analysis.softmax_argument if kind == "softmax" else analysis.gradient_correlation
    table = ResultTable()
    for m in loaded.values():
        table.extend(run(m.model, data, eps=eps, n_images=images, seed=seed,
                         batch_size=batch_size, model_name=m.name, model_hash=m.hash, **kw))
    plot = (figures.plot_softmax_argument if kind == "softmax"
            else figures.plot_gradient_correlation)
    path = plot(table, figure, models=list(loaded))  # the files asked for first
    if views_figure:
        path = f"{path}, {figures.plot_attack_views(table, views_figure, models=list(loaded))}"
    save_results(table, results, [m.record() for m in loaded.values()])
    click.echo(f"{len(table)} rows stored in {results}; figure {path}")


def _model_analysis_options(fn):
    for opt in reversed([
        click.option("--model", "models", multiple=True, required=True,
                     help="Model NAME=PATH (or PATH); repeat for several."),
        click.option("--eps", type=EPS, default=",".join(str(e) for e in range(17)),
                     show_default=True, help="Comma-separated epsilons (pixel units)."),
        click.option("--images", type=POSITIVE, default=128, show_default=True,
                     help="Randomly chosen test images (the same for every model)."),
    ]):
        fn = opt(fn)
    return common_options(fn)


#: The methods of ``analyze softmax``: N18's directions, then the attacks whose images
#: it follows (:data:`cascade_adv.analysis.softmax.ALL_METHODS`, kept here so that the
#: command line parses without importing torch; tests/test_softmax_directions.py checks
#: that the two agree).
SOFTMAX_METHODS = ("step_ll", "step_fgsm", "random_sign", "iter_fgsm", "apgd_ce")
N18_METHODS = SOFTMAX_METHODS[:3]


def _softmax_methods(methods, method, apgd_steps) -> tuple[tuple[str, ...], dict]:
    """``--methods`` then each ``--method`` (duplicates dropped; neither: N18's three)
    and the attacks' options (``--apgd-steps``, only with apgd_ce)."""
    names = tuple(dict.fromkeys([*(methods or ()), *method])) or N18_METHODS
    if apgd_steps is None:
        return names, {}
    if "apgd_ce" not in names:
        raise click.UsageError("--apgd-steps sets the steps of apgd_ce; add --method apgd_ce "
                               "or drop --apgd-steps")
    return names, {"apgd_ce": {"steps": apgd_steps}}


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_model_analysis_options
@click.option("--methods", type=AttackNames(choices=SOFTMAX_METHODS), default=None,
              metavar="NAMES",
              help="Comma-separated methods: N18's directions step_ll, step_fgsm, random_sign "
                   "(figures 4, 6), and the images of the attacks iter_fgsm and apgd_ce (the "
                   "audit's first attack). Default, with no --method either: "
                   + ",".join(N18_METHODS) + ".")
@click.option("--method", "method", multiple=True, type=click.Choice(SOFTMAX_METHODS),
              help="One more method (after --methods); repeat for several.")
@click.option("--apgd-steps", type=click.IntRange(1, 10_000), default=None,
              help="APGD-CE's steps with --method apgd_ce (default: the attack's 100); fewer "
                   "run faster and find less. Rows of other steps are stored as "
                   "apgd_ce:steps=N.")
@_figure_option("figures/n18_fig4_softmax_argument.png")
@click.option("--views-figure", type=click.Path(dir_okay=False),
              default="figures/softmax_attack_views.png", show_default=True,
              help="With iter_fgsm or apgd_ce among the methods: where to write the PNG of "
                   "step_ll, iter_fgsm and apgd_ce side by side per model.")
def softmax(methods, method, apgd_steps, views_figure, **kw):
    """N18 figures 4 and 6: logit of the true class and mean logit of the false
    classes vs epsilon (mean +- std over the images), along N18's directions or at
    the images of the attacks iter_fgsm and apgd_ce (what the paper's attacks see vs
    what the audit finds)."""
    names, options = _softmax_methods(methods, method, apgd_steps)
    views = views_figure if {"iter_fgsm", "apgd_ce"} & set(names) else None
    _model_analysis("softmax", methods=names, attack_options=options, views_figure=views,
                    **kw)


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_model_analysis_options
@_figure_option("figures/n18_fig5_gradient_correlation.png")
def gradcorr(**kw):
    """N18 figure 5: Pearson correlation of input gradients, clean vs step_ll /
    step_FGSM / random sign and step_ll vs step_FGSM, vs epsilon (mean +- 0.5 std)."""
    _model_analysis("gradcorr", **kw)


def _indicator_attacks(ctx, param, value):
    """``--attack``: names with a per-step trace (``NAME[:KEY=VALUE...]``, repeated or
    comma-separated), checked when the command line is parsed."""
    from cascade_adv.evaluation.indicators import check_attacks

    items = [p.strip() for v in value for p in v.split(",") if p.strip()] if value else [
        "iter_fgsm", "apgd_ce"]
    try:
        check_attacks(items)
    except CascadeAdvError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return items


@analyze.command(epilog=EXAMPLES_ANALYZE)
@click.option("--model", "models", multiple=True, required=True,
              help="Model NAME=PATH (or PATH); repeat for several.")
@click.option("--eps", type=EpsList(positive=True), default="16", show_default=True,
              help="Comma-separated epsilons in pixel units (0, 255].")
@click.option("--attack", "attack_list", multiple=True, callback=_indicator_attacks,
              help="An attack to trace, NAME[:KEY=VALUE...] of iter_fgsm, iter_ll, apgd_ce, "
              "apgd_dlr, apgd_t; repeat for several [default: iter_fgsm, apgd_ce].")
@click.option("--twin", type=click.Path(), default=None,
              help="A surrogate model (run folder or checkpoint) of the same task: its "
              "adversarial examples are checked on each model (transfer_failure).")
@click.option("--images", type=POSITIVE, default=128, show_default=True,
              help="Randomly chosen test images (the same for every model).")
@common_options
def indicators(models, eps, attack_list, twin, images, dataset, data_root, limit, batch_size,
               device, results, seed, quiet):
    """Indicators of attack failure (Pintor et al. 2022), per image: silent success,
    incomplete optimisation, non-converging attack, unavailable gradients, unstable
    predictions and (with --twin) transfer failure, as the % of the images each fires
    on, per attack and eps (docs/design.md, "Indicators of attack failure")."""
    from cascade_adv import analysis
    from cascade_adv.evaluation import attack_failure_indicators, prepare_images
    from cascade_adv.evaluation.diagnostics import check_twin_pair
    from cascade_adv.results.tables import ResultTable
    from cascade_adv.training import resolve_device
    from cascade_adv.training.runs import LoadedModel, load_models, load_split, model_inputs

    check_outputs(store=results, inputs=[
        *_models_inputs(("--model", models), dataset=dataset, data_root=data_root),
        *model_inputs(twin, "--twin")])
    dev = resolve_device(device)
    loaded = load_models(models, dev)
    surrogate = LoadedModel(twin, dev) if twin else None
    for m in loaded.values() if surrogate else ():  # before the data loads
        check_twin_pair(m.model, surrogate.model, model_name=m.name,
                        twin_name=f"--twin {twin}", model_hash=m.hash,
                        twin_hash=surrogate.hash)
    data = load_split(list(loaded.values()), dataset, data_root, "test", limit, dev)
    subset = analysis.choose_images(data, images, seed)
    table = ResultTable()
    for m in loaded.values():
        result = attack_failure_indicators(
            m.model, prepare_images(m.model, subset.images), subset.labels, eps,
            attacks=attack_list, surrogate=surrogate.model if surrogate else None,
            surrogate_name=f"--twin {twin}", seed=seed, batch_size=batch_size,
            model_name=m.name, model_hash=m.hash, dataset=subset.name, split=subset.split)
        click.echo(f"{m.name}: % of the {result.n} images it classifies correctly (of "
                   f"{len(subset.labels)}) on which each indicator fires")
        click.echo(result.to_markdown())
        table.extend(result.table())
    if not surrogate:
        click.echo("(--twin RUN adds transfer_failure)")
    save_results(table, results, [m.record() for m in loaded.values()])
    click.echo(f"{len(table)} rows stored in {results}")


@analyze.command(name="transfer-eps", epilog=EXAMPLES_ANALYZE)
@click.option("--source", required=True, help="Source model NAME=PATH (or PATH).")
@click.option("--target", required=True, help="Target model NAME=PATH (or PATH).")
@click.option("--attacks", "names", type=ATTACKS, default="step_fgsm,iter_fgsm,iter_ll",
              show_default=True)
@click.option("--eps", type=EPS, default="2,4,8,16", show_default=True)
@click.option("--sets", "sets_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the crafted sets here and reuse them.")
@click.option("--figure-dir", type=click.Path(file_okay=False), default="figures",
              show_default=True)
@common_options
def transfer_eps(source, target, names, eps, sets_dir, figure_dir, dataset,
                 data_root, limit, batch_size, device, results, seed, quiet):
    """K17 figures 2 and 5: transfer rate and error rate vs epsilon, source -> target."""
    from cascade_adv.evaluation import transfer_matrix
    from cascade_adv.reporting import figures
    from cascade_adv.training import resolve_device
    from cascade_adv.training.runs import load_models, load_split
    figs = {kind: Path(figure_dir) / f"{fig}.png" for kind, fig in
            (("transfer", "k17_fig2_transfer_rate"), ("error", "k17_fig5_error_rate"))}
    check_outputs(files=[("--figure-dir", f) for f in figs.values()],
                  dirs=[("--sets", sets_dir)], store=results,
                  inputs=_models_inputs(("--source", (source,)), ("--target", (target,)),
                                        dataset=dataset, data_root=data_root))
    dev = resolve_device(device)
    (src,) = load_models((source,), dev).values()
    (tgt,) = load_models((target,), dev).values()
    if src.name == tgt.name:
        raise CascadeAdvError("source and target are the same model; name two different ones")
    data = load_split([src, tgt], dataset, data_root, "test", limit, dev)
    table = transfer_matrix({src.name: src.model}, {tgt.name: tgt.model}, data, names, eps,
                            hashes={src.name: src.hash, tgt.name: tgt.hash}, sets_dir=sets_dir,
                            batch_size=batch_size, seed=seed, progress=not quiet)
    for kind, fig in figs.items():  # the files asked for first
        path = figures.plot_transfer_vs_eps(table, fig, source=src.name, target=tgt.name,
                                            attacks=names, kind=kind)
        click.echo(f"figure {path}")
    save_results(table, results, [src.record(), tgt.record()])


def _sweep_options(fn):
    for opt in reversed([
        click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                     help="Training config every network starts from."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Folder for the runs (default: runs/EXPERIMENT)."),
        click.option("--attacks", "names", type=ATTACKS,
                     default="step_ll,step_fgsm,iter_ll,iter_fgsm", show_default=True,
                     help="White-box attacks to evaluate."),
        click.option("--eps", type=EPS, default="16", show_default=True),
        click.option("--limit", type=POSITIVE, default=None,
                     help="Evaluate on the first N test images."),
        click.option("--batch-size", type=POSITIVE, default=500, show_default=True),
        click.option("--results", type=click.Path(dir_okay=False), default="results/results.db",
                     show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        click.argument("overrides", nargs=-1),
    ]):
        fn = opt(fn)
    return fn


def _run_sweep(experiment, variants, config_path, out, names, eps, limit,
               batch_size, results, quiet, overrides, figure=None, figures=()):
    from cascade_adv.analysis.sweeps import run_variants
    from cascade_adv.evaluation import ResultsStore
    from cascade_adv.training.loop import preflight
    from cascade_adv.training.runs import config_inputs
    out = out or f"runs/{experiment.replace(':', '_')}"
    cfgs = _sweep_configs(config_path, overrides, variants, experiment)
    check_outputs(files=[("--figure", f) for f in (figure, *figures)], dirs=[("--out", out)],
                  store=results, inputs=[p for cfg in cfgs for p in config_inputs(cfg,
                                                                                   config_path)])
    preflight(cfgs)  # what training checks first, for every network, before the store opens
    with ResultsStore(results) as store:
        table = run_variants(config_path, variants, out, store, experiment=experiment,
                             overrides=overrides, attacks=names, eps=eps, limit=limit,
                             batch_size=batch_size, progress=not quiet)
    click.echo(table.to_markdown())
    return table, names, eps


def _sweep_configs(config_path, overrides, variants, experiment) -> list:
    """The base config and every network's, read (and validated) before any run starts."""
    from cascade_adv.training import load_config

    base = load_config(config_path, overrides)  # the user's part first: its errors name it
    return [base] + [load_config(config_path, [*overrides, *v.overrides,
                                               f"name={experiment}/{v.name}"])
                     for v in variants]


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_sweep_options
@click.option("--values", default="0,1e-4,1e-3,1e-2,0.1,0.3", show_default=True,
              help="Comma-separated lambda2 values.")
@_figure_option("figures/n18_fig3_lambda2.png")
def lambda2(values, figure, **kw):
    """N18 figure 3: clean and adversarial accuracy vs lambda2 (Pivot, step_ll)."""
    from cascade_adv.analysis.sweeps import lambda2_variants
    from cascade_adv.reporting import figures

    variants = lambda2_variants(_csv_list(values, float, option="--values"))
    table, names, eps = _run_sweep("lambda2", variants, figure=figure, **kw)
    path = figures.plot_sweep(table, figure, values={f"lambda2/{v.name}": v.params["lam2"]
                                                     for v in variants},
                              xlabel="lambda2", series=[("clean", 0.0)] +
                              [(a, e) for a in names for e in eps], log_x=True,
                              title="N18 fig. 3: accuracy vs lambda2")
    click.echo(f"figure {path}")


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_sweep_options
@click.option("--widths", default="0.5,1,2", show_default=True,
              help="Comma-separated width multipliers rho.")
@_figure_option("figures/k17_fig1_capacity.png")
def capacity(widths, figure, **kw):
    """K17 figures 1 and 4: adversarial / clean accuracy ratio vs width multiplier rho,
    with and without adversarial training."""
    from cascade_adv.analysis.sweeps import capacity_variants
    from cascade_adv.reporting import figures

    variants = capacity_variants(_csv_list(widths, float, option="--widths"))
    top5 = Path(figure).with_name(Path(figure).stem.replace("fig1", "fig4") + "_top5.png")
    table, names, eps = _run_sweep("capacity", variants, figure=figure, figures=[top5], **kw)
    layout = {f"capacity/{v.name}": (v.params["width"], v.params["adversarial"])
              for v in variants}
    for k, fig in ((1, Path(figure)), (5, top5)):
        if table.filter(metric=f"top{k}").rows:
            path = figures.plot_capacity(table, fig, widths=layout, attacks=names, eps=eps, k=k)
            click.echo(f"figure {path}")


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_sweep_options
@click.option("--activations", "activation_list",
              default="relu,relu6,relu_decay:0.001,relu_decay:0.01,relu_decay:0.1,tanh",
              show_default=True, help="Activations; relu_decay:BETA for ReluDecay.")
@_figure_option("figures/k17_table7_activations.png")
def activations(activation_list, figure, **kw):
    """K17 table 7: adversarially trained networks with each activation function."""
    from cascade_adv.analysis.sweeps import activation_variants
    from cascade_adv.reporting import figures

    variants = activation_variants(_csv_list(activation_list, option="--activations"))
    table, names, _ = _run_sweep("activations", variants, figure=figure, **kw)
    path = figures.plot_accuracy_vs_eps(table, figure, attacks=names,
                                        models=[f"activations/{v.name}" for v in variants])
    click.echo(f"figure {path}")


@analyze.command(name="label-leaking", epilog=EXAMPLES_ANALYZE)
@_sweep_options
@click.option("--methods", default="step_fgsm,step_ll", show_default=True,
              help="One-step methods to train with (each evaluated with itself).")
@_figure_option("figures/k17_table3_label_leaking.png")
def label_leaking(methods, figure, **kw):
    """K17 table 3: train with FGSM and with step_ll; adversarial accuracy above clean
    accuracy under the training method means the labels leak."""
    from cascade_adv.analysis.sweeps import label_leaking_table, label_leaking_variants
    from cascade_adv.reporting import figures

    variants = label_leaking_variants(_csv_list(methods, option="--methods"))
    for v in variants:  # each network must be attacked with its own training method
        if v.params["train_method"] not in kw["names"]:
            kw["names"] = [*kw["names"], v.params["train_method"]]
    table, _, _ = _run_sweep("label_leaking", variants, figure=figure, **kw)
    rows = label_leaking_table(table, {f"label_leaking/{v.name}": v.params["train_method"]
                                       for v in variants})
    for r in rows:
        flag = "  <- label leaking" if r["leak"] else ""
        click.echo(f"{r['model']}: clean {r['clean']:.1f}, {r['method']} eps {r['eps']:g} "
                   f"{r['adversarial']:.1f}{flag}")
    path = figures.plot_accuracy_vs_eps(table, figure, models=[f"label_leaking/{v.name}"
                                                               for v in variants],
                                        attacks=[v.params["train_method"] for v in variants])
    click.echo(f"figure {path}")


@analyze.command(epilog=EXAMPLES_ANALYZE)
@_sweep_options
@click.option("--seeds", default="1,2,3,4,5", show_default=True)
@click.option("--shared-init/--no-shared-init", default=True, show_default=True,
              help="Start every network from the config's init_from, or each from its own "
                   "random initialisation.")
@click.option("--label", default=None, help="Group label in tables (default: config name).")
def seeds(seeds, shared_init, label, **kw):
    """N18 table 3: N networks of one configuration, mean +- std of every cell."""
    from cascade_adv.analysis.sweeps import seed_variants
    from cascade_adv.evaluation.stats import aggregate_seeds, format_mean_std
    from cascade_adv.training import load_config

    cfg = load_config(kw["config_path"], kw["overrides"])
    group = label or cfg.name
    variants = seed_variants(_csv_list(seeds, int, option="--seeds"), shared_init)
    table, _, _ = _run_sweep(f"seeds:{group}", variants, **kw)
    stats = aggregate_seeds(table, {group: [f"seeds:{group}/{v.name}" for v in variants]})
    for r in stats.filter(metric="top1_mean"):
        std = stats.value(group, r["attack"], r["eps"], "top1_std")
        click.echo(f"{group} {r['attack']} {r['eps']:g}: {format_mean_std(r['value'], std)} "
                   f"(n={r['n']})")


# --- cascade-adv report ------------------------------------------------------------------

EXAMPLES_REPORT = """
\b
Examples:
  cascade-adv report                               # results/results.db -> report/
  cascade-adv report --results runs/t1/results.db --out report/t1
"""


@cli.command(epilog=EXAMPLES_REPORT)
@click.option("--results", type=click.Path(dir_okay=False), default="results/results.db",
              show_default=True, help="SQLite results store to report on.")
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True,
              help="Folder for report.html, report.md and figures/.")
@click.option("--title", default="cascade-adv report", show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Write into --out even when it holds something other than a report.")
def report(results, out, title, overwrite):
    """One HTML page and one Markdown file with every table and figure the store can
    fill, in the papers' layout, the published numbers beside ours and the sanity
    warnings."""
    from cascade_adv.evaluation import ResultsStore
    from cascade_adv.reporting.report import build_report

    if not Path(results).is_file():
        raise CascadeAdvError(f"no results store at {results}; run 'cascade-adv eval' first or "
                              "pass --results")
    from cascade_adv.reporting.report import check_report_output, report_outputs

    check_outputs(written=[("--out", p) for p in report_outputs(out)], store=results)
    check_report_output(out, overwrite=overwrite)
    with ResultsStore(results) as store:
        html_path, md_path = build_report(store, out, title=title, overwrite=overwrite)
    click.echo(f"report: {html_path} and {md_path}")


# --- cascade-adv store ------------------------------------------------------------------

EXAMPLES_STORE = """
\b
Examples:
  cascade-adv store import results/results.db.unsaved-20250101T120000Z-4242.jsonl
  cascade-adv store import rows.jsonl --results results/other.db
"""


@cli.group(epilog=EXAMPLES_STORE)
def store():
    """The results store: rows that a command could not write to it (the store was
    locked past its timeout, the disk was full) are kept in a pending file, and
    imported from it here."""


@store.command(name="import", epilog=EXAMPLES_STORE)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Store to import into [default: the one the file names].")
@click.option("--on-conflict", type=click.Choice(["error", "keep", "replace"]),
              default="error", show_default=True,
              help="A row or model record that would replace one of another model hash, or "
              "a newer one: error (list the conflicts, import nothing), keep (the store's "
              "entries stay, the rest is imported) or replace.")
def import_(file, results, on_conflict):
    """Put the rows and model records of a pending file into the results store (one
    transaction), each with the time it was computed. Every row is checked as a freshly
    computed one; an entry never silently replaces one of another model hash or a newer
    one (--on-conflict). The file is left as it is."""
    from cascade_adv.errors import StoreConflict
    from cascade_adv.results.store import import_rows

    try:
        done = import_rows(file, results, on_conflict=on_conflict)
    except StoreConflict as exc:
        for line in exc.conflicts:
            click.echo(f"conflict: {line}", err=True)
        raise
    verb = "kept as the store had them" if on_conflict == "keep" else "replaced"
    for line in done.conflicts:
        click.echo(f"conflict ({verb}): {line}", err=True)
    click.echo(f"imported {done.rows} rows and {done.models} model records from {file} into "
               f"{done.store}; {file} can be deleted")
