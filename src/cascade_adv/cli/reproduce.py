"""``cascade-adv reproduce``: one command per table and figure of both papers."""

from __future__ import annotations

import os

import click

from cascade_adv.cli.common import POSITIVE, _csv_list, cli

EXAMPLES = """
\b
Examples:
  cascade-adv reproduce --list
  cascade-adv reproduce n18-table1 --data-dir ../shared/data --out runs/repro-mnist
  cascade-adv reproduce n18-table1 --scale 0.1 --test-images 1000 --jobs 2 --dry-run
  cascade-adv reproduce n18-table1 --seeds 3 --test-images 2000 --out ~/repro-mnist
  cascade-adv reproduce n18-table1 --seeds 3 --seeds-for baseline --test-images 2000
  cascade-adv reproduce n18-table1 --seeds 3 --test-images 2000 --out ~/repro-mnist \\
      --report-only   # the report so far, while that run goes on
  cascade-adv reproduce n18-figure4 --dataset mnist --out runs/repro-mnist   # reuses table 1
  cascade-adv reproduce n18-table2 --only baseline,step_ll --scale 0.02 --out runs/repro-cifar
  cascade-adv reproduce n18-table1 --dataset digits --scale 0.02 --out runs/repro-digits
  cascade-adv reproduce n18-table2 --executor ray --jobs 8 --gpus-per-step 0.25
  cascade-adv reproduce n18-table1 --audit --test-images 2000 --out ~/repro-mnist
  cascade-adv reproduce n18-table1 --audit --audit-version quick --dry-run  # audit cost here
  cascade-adv reproduce n18-table1 --audit --audit-version quick --audit-jobs 2 --threads 1 \\
      --test-images 1000 --out ~/repro-mnist   # each audit over two single-thread workers
  cascade-adv reproduce n18-table2 --audit --audit-compile --out runs/repro-cifar  # Square compiled
  cascade-adv reproduce --list --audit --audit-version quick   # every recipe, audit included
"""


class SeedList(click.ParamType):
    """``--seeds``: a count N (seeds 0 .. N-1) or a comma list of seeds, checked by
    :func:`cascade_adv.experiments.reproduce.seed_indices` when the line is parsed (its
    bounds, ``SEEDS_BOUNDS`` there, are those the option's help states)."""

    name = "seeds"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        from cascade_adv.errors import CascadeAdvError
        from cascade_adv.experiments.reproduce import seed_indices

        try:
            items = _csv_list(str(value), int, option="--seeds")
            return seed_indices(items[0] if len(items) == 1 and "," not in str(value)
                                else items)
        except CascadeAdvError as exc:
            self.fail(str(exc), param, ctx)


SEEDS = SeedList()


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else (
        f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


def _list(data_dir, device, out, threads, audit) -> None:
    from cascade_adv.experiments.cost import estimate
    from cascade_adv.experiments.recipes import ALIASES, RECIPES, Builder, build_steps
    from cascade_adv.experiments.reproduce import StepRecord, data_available, default_configs
    from cascade_adv.experiments.steps import Runtime

    rt = Runtime(str(default_configs()), data_dir, device, threads)
    timing: dict = {}
    wide = max(13, *map(len, RECIPES))
    click.echo(f"{'recipe':{wide}s} {'data':22s} {'steps':>5s} {'full recipe here':>16s}  what")
    for name, recipe in RECIPES.items():
        dataset = recipe.datasets[0]
        steps = build_steps(recipe, Builder(rt.configs, dataset),
                            audit=audit if recipe.whitebox_tables else None)
        records = [StepRecord(s, "", None) for s in steps]
        cache = out or f"runs/reproduce-{dataset}"
        estimate(records, rt, timing, quick=True, out=cache)
        need = f"{dataset} ({'present' if data_available(dataset, data_dir) else 'absent'})"
        also = f"; also --dataset {', '.join(recipe.datasets[1:])}" if recipe.datasets[1:] else ""
        spent = sum(r.estimate for r in records)
        share = sum(r.estimate for r in records if r.measured) / spent if spent else 0
        how = f" ({share:.0%} measured)" if share else ""
        click.echo(f"{name:{wide}s} {need:22s} {len(steps) + 1:5d} "
                   f"{_minutes(spent):>16s}  {recipe.title}{also}{how}")
    for alias, target in ALIASES.items():
        click.echo(f"{alias:{wide}s} {'':22s} {'':5s} {'':>16s}  same recipe as {target}")
    click.echo(f"Estimates with --jobs 1 and {threads or 'all'} threads on {device}: measured "
               "where the cache (--out, default runs/reproduce-DATASET) has run the same model "
               "(its seconds per training iteration and per evaluation pass; the share in "
               "brackets), else from one timed forward + backward pass of each model (other "
               "load inflates them); --scale F divides training time by about 1/F."
               + (f" With --audit: the {audit} audit of every model of a white-box table "
                  "included, its later attacks priced on the share of images the paper's "
                  "attacks left correct where the cache has them, else as if every attack "
                  "ran on every image (an upper bound)." if audit else ""))


def _print_comparison(comparison: dict, tolerance: float) -> None:
    """The printed summary of each table of the report (``comparison.json``)."""
    from cascade_adv.reporting.reproduction import audit_summary, claim_verdict

    for table, comp in comparison.items():
        s = comp["summary"]
        if comp.get("published", True):
            click.echo(f"{table}: {s['compared']} cells beside the paper's, {s['off']} more "
                       f"than {tolerance:g} points off, {s['missing']} missing"
                       + (f", {s['rows_not_run']} paper rows not run" if s["rows_not_run"]
                          else ""))
        else:   # a recipe beyond the papers: ours alone
            click.echo(f"{table}: {s['measured']} of {s['cells']} cells measured, no "
                       f"published numbers, {s['missing']} missing"
                       + (f", {s['rows_not_run']} rows not run" if s["rows_not_run"] else ""))
        for c in comp["claims"]:
            click.echo(f"  {c['claim']}: {claim_verdict(c)}")
        if "audit" in comp:
            click.echo("\n".join(audit_summary(comp["audit"])))


@cli.command(epilog=EXAMPLES)
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List every recipe, its data and cost.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Cache and report folder [default: runs/reproduce-DATASET].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with mnist/, cifar10/ ... [default: $CASCADE_ADV_DATA or ./data].")
@click.option("--dataset", type=click.Choice(["mnist", "cifar10", "imagenet", "digits"]),
              default=None, help="Another dataset the recipe maps to (digits: MNIST recipes "
              "on the bundled digits, for a quick check).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Shorten every schedule by this factor in (0, 1].")
@click.option("--test-images", type=POSITIVE, default=None,
              help="Evaluate on the first N test images [default: all].")
@click.option("--jobs", type=POSITIVE, default=1, show_default=True,
              help="Independent steps run at the same time.")
@click.option("--threads", type=POSITIVE, default=None,
              help="Torch threads per step [default: CPUs / jobs].")
@click.option("--only", default=None,
              help="Only the models whose config name contains one of these (comma list).")
@click.option("--seeds", type=SEEDS, default="1", show_default=True,
              help="Train every configuration with N seeds (its whole chain, pre-training "
              "included), or with the seeds listed (0,3: seed 0 is the configs' own); the "
              "report gives mean +- std. Cached per seed: raising N trains the new ones. "
              "At most 100 seeds, each 0 .. 2147483647 (2^31 - 1).")
@click.option("--seeds-for", default=None,
              help="Train the seeds after the first only for the models whose config name "
              "contains one of these (comma list, as --only); the others train one seed.")
@click.option("--audit", is_flag=True, help="Also audit every model of the recipe's "
              "white-box table (APGD-CE, APGD-T, Square in sequence, with the gradient-"
              "masking diagnostics) at the table's eps on the same test images; the report "
              "adds 'Under the audit' and judges the paper's claims again on it.")
@click.option("--audit-version", type=click.Choice(["standard", "quick"]), default=None,
              help="standard (AutoAttack's: APGD-CE, APGD-T and FAB-T with 9 targets, Square "
              "with 5000 queries) or quick (APGD-CE, APGD-T with 3 targets, Square with 1000 "
              "queries; for a CPU) [default: standard].")
@click.option("--audit-jobs", type=POSITIVE, default=1, show_default=True,
              help="Split each audit step's images into this many shards, each audited by a "
              "single-thread worker process (the same outcomes as one process).")
@click.option("--audit-compile", is_flag=True,
              help="The audit steps run Square on the model compiled with torch.compile's "
              "freezing (a compile of 10-60 s per audit worker; Square about 1.4x faster on "
              "a 2-core CPU; checked before any work).")
@click.option("--dry-run", is_flag=True, help="Print the steps, which are cached, and the "
              "estimated time of each; run nothing.")
@click.option("--report-only", is_flag=True, help="Write the report from the steps finished "
              "so far and run nothing else (an interim report of a long run, also while it "
              "goes on; needs neither the data nor the device). It lists the steps not run "
              "yet; their cells and seeds are missing.")
@click.option("--tolerance", type=float, default=1.5, show_default=True,
              help="Points from the paper beyond which a cell is marked.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where steps run: local worker processes, or Ray tasks "
              "(pip install 'cascade-adv[ray]').")
@click.option("--ray-address", default=None, help="Ray cluster to join (e.g. auto) "
              "[default: start a local instance].")
@click.option("--gpus-per-step", type=float, default=0.0, show_default=True,
              help="With Ray: the fraction of a GPU each step asks for (0.25: four "
              "configurations share a GPU).")
@click.option("--download", is_flag=True, help="Fetch MNIST / CIFAR-10 into --data-dir "
              "when absent.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, auto.")
@click.option("--configs", type=click.Path(file_okay=False), default=None,
              help="The configs folder [default: the repository's configs/].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce(name, list_, out, data_dir, dataset, scale, test_images, jobs, threads, only,
              seeds, seeds_for, audit, audit_version, audit_jobs, audit_compile, dry_run,
              report_only, tolerance, executor,
              ray_address,
              gpus_per_step, download, device, configs, quiet):
    """Reproduce one table or figure of N18 / K17: train, craft, evaluate, report.

    Every step is cached under --out by a hash of its config, its inputs and the code
    version, so a repeated or interrupted run resumes and skips finished steps, and
    recipes that share models (N18 table 1 and figures 4-5 on MNIST) train them once.
    The report (OUT/reports/NAME/report.html) puts ours beside the paper's for every
    cell and checks the paper's claims on our numbers; with --audit, it adds the audit's
    worst case beside them, each model's diagnostics, and the claims under the audit.
    """
    from cascade_adv.errors import InvalidArgument
    from cascade_adv.experiments.recipes import get_recipe
    from cascade_adv.experiments.reproduce import NOT_RUN
    from cascade_adv.experiments.reproduce import reproduce as run

    if audit_version is not None and not audit:
        raise InvalidArgument(f"--audit-version {audit_version} is used by the audit only; "
                              "add --audit (or drop --audit-version)")
    audit = (audit_version or "standard") if audit else None
    if list_:
        _list(data_dir, device, out, threads, audit)
        return
    if not name:
        raise InvalidArgument("give a recipe name (cascade-adv reproduce --list shows them)")
    recipe = get_recipe(name)
    out = out or f"runs/reproduce-{dataset or recipe.datasets[0]}"
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    total = [0]

    def event(what, rec):
        if what == "start":
            total[0] += 1
            click.echo(f"[{total[0]}] {rec.step.name} ...")
        elif what == "done":
            click.echo(f"    done {rec.step.name} in {_minutes(rec.seconds)}")
        else:
            click.echo(f"    {what} {rec.step.name}" + (f": {rec.error}" if rec.error else ""))

    result = run(name, out, data_dir=data_dir, dataset=dataset, scale=scale,
                 test_images=test_images, jobs=jobs, threads=threads,
                 only=_csv_list(only, option="--only") if only else (), dry_run=dry_run,
                 device=device, configs=configs, tolerance=tolerance, download=download,
                 executor=executor, ray_address=ray_address, gpus_per_step=gpus_per_step,
                 progress=not quiet and jobs == 1, on_event=event, seeds=seeds, audit=audit,
                 audit_jobs=audit_jobs, audit_compile=audit_compile, report_only=report_only,
                 seeds_for=_csv_list(seeds_for, option="--seeds-for") if seeds_for else ())
    if dry_run:
        todo = [r for r in result.records if r.status != "cached"]
        for r in result.records:
            click.echo(f"{r.status:7s} {r.step.name:60s} "
                       + ("-" if r.status == "cached" else "~" + _minutes(r.estimate)
                          + (" (measured)" if r.measured else "")))
        from cascade_adv.experiments.cost import wall_time

        click.echo(f"{len(result.records) - len(todo)} of {len(result.records)} steps cached; "
                   f"{_minutes(sum(r.estimate or 0 for r in todo))} of step time, about "
                   f"{_minutes(wall_time(result.records, jobs))} with --jobs {jobs} "
                   f"({threads} threads each, device {device})")
        return
    cached = sum(r.status == "cached" for r in result.records)
    click.echo(f"{cached} steps cached, {sum(r.status == 'done' for r in result.records)} run "
               f"in {_minutes(result.seconds)}")
    if waiting := [r for r in result.records if r.status == NOT_RUN]:
        click.echo(f"a partial report: {len(waiting)} steps not run yet (--report-only)")
    _print_comparison(result.comparison or {}, tolerance)
    failed = [r for r in result.records if r.status in ("failed", "blocked")]
    if result.report:
        click.echo(f"report: {result.report / 'report.html'}")
    if failed:
        for r in failed:
            click.echo(f"{r.status}: {r.step.name}" + (f": {r.error}" if r.error else ""),
                       err=True)
        raise SystemExit(1)
