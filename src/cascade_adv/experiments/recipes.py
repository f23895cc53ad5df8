"""The reproduction recipes: every table and figure of N18 and K17 as a graph of steps.

A recipe's ``build`` adds steps to a :class:`Builder`: ``b.train(CONFIG)`` adds the
training of ``configs/CONFIG`` together with what it starts from (its ``init_from``
pre-training, the crafting of the saved images its cascade sources name), all scaled
by ``--scale``; ``b.whitebox`` / ``b.transfer`` / ``b.analysis`` evaluate, and with
``--audit`` ``b.audit`` adds the robustness audit of every model of a white-box table. Which
paper rows the models reproduce comes from their config's ``paper`` key (a sweep's
networks: the recipe's ``rows``), the attacks and epsilons of an evaluation from the
published table's columns, so a recipe lists little more than its configs. A recipe
beyond the papers (``beyond-n18-mnist``) has a ``layout`` instead of published tables: a
published table's columns with rows of its own (``rows``) and no numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_adv.errors import CascadeAdvError, InvalidArgument
from cascade_adv.experiments.steps import Step
from cascade_adv.reporting.reproduction import Claim, seed_tag
from cascade_adv.results.published import CLEAN, PaperTable, get_table, layout

#: Kinds of published tables whose cells are white-box accuracies.
WHITEBOX_KINDS = ("whitebox", "mean_std")
SAVED_SET = re.compile(r"(?:^|/)(?P<model>[^/]+)_iter_fgsm_train/?$")
FIGURE_EPS = tuple(float(e) for e in range(17))      # N18 figures 4-6: eps 0..16


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    datasets: tuple[str, ...]          # the paper's first; others where it is mapped
    build: Callable[[Builder], None] = field(repr=False)
    tables: tuple[str, ...] = ()       # published tables the report compares with
    claims: tuple[Claim, ...] = ()
    note: str = ""
    #: the networks of a sweep (their name, or its prefix before ``/``, without the
    #: scale suffix) -> paper row label; other models name their rows in their
    #: config's ``paper`` key (except in a ``layout``, whose rows all come from here)
    rows: dict[str, str] = field(default_factory=dict)
    #: epsilons ``--audit`` adds to those of the white-box table (e.g. MNIST's customary
    #: 0.3 x 255); the table's attacks run there too, for ours beside the audit
    audit_eps: tuple[float, ...] = ()
    #: the config of the recipe's undefended network: ``--audit`` gives every other
    #: audited model that network (of the same seed) as its undefended twin, for the
    #: diagnostic ``transfer_no_stronger``
    audit_twin: str = ""
    #: a recipe beyond the papers: its own table (:func:`~cascade_adv.results.published.
    #: layout`: a published table's columns, the labels of ``rows``, no numbers), which
    #: its white-box steps evaluate the columns of and its report shows without a paper
    #: column; ``tables`` then stays empty (nothing published to compare with)
    layout: PaperTable | None = None
    #: the row (of ``layout``) the report's training costs are relative to
    cost_reference: str = ""

    @property
    def paper(self) -> str:
        return self.name.split("-")[0].upper()

    @property
    def whitebox_tables(self) -> tuple[str, ...]:
        """The recipe's tables of white-box accuracy (the ones ``--audit`` audits the
        models of): its published ones, then its layout."""
        own = (self.layout.id,) if self.layout is not None else ()
        return tuple(t for t in self.tables if get_table(t).kind in WHITEBOX_KINDS) + own


# --- the builder ----------------------------------------------------------------------------

def chain_seed(seed: int, index: int) -> int:
    """The seed a config with ``seed`` trains with in seed ``index`` of a chain: its own
    for index 0, else a 32-bit seed drawn from ``SeedSequence((seed, index))``, so the
    chains of a recipe are independent of each other and of the configs' own seeds."""
    if index == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def config_index(configs: Path) -> dict[str, str]:
    """Training-config name -> its file relative to ``configs``."""
    from cascade_adv.textdata import load_yaml

    out = {}
    for path in sorted(configs.rglob("*.yaml")):
        try:  # ConfigError (a ValueError): not YAML, or past the limits of textdata
            tree = load_yaml(path.read_text(), str(path)) or {}
        except (OSError, ValueError):
            continue
        if isinstance(tree, dict) and isinstance(tree.get("name"), str):
            out.setdefault(tree["name"], str(path.relative_to(configs)))
    return out


class Builder:
    """Collects a recipe's steps for one dataset, scale and test-image count."""

    def __init__(self, configs: str | Path, dataset: str, *, scale: float = 1.0,
                 test_images: int | None = None, substitute: str | None = None):
        self.configs = Path(configs)
        self.index = config_index(self.configs)
        self.dataset = dataset            # the dataset the recipe's configs are for
        self.substitute = substitute      # digits in place of MNIST (quick checks)
        self.scale = scale
        self.test_images = test_images
        #: which seed of every chain the next steps train (:func:`chain_seed`)
        self.seed = 0
        self.steps: dict[str, Step] = {}
        #: what a training step computes -> its name: configs that train the same
        #: thing (e.g. the released pivot and the bidirectional loss) share one step
        self._trained: dict[str, str] = {}
        #: white-box step name -> the published table whose columns it evaluates
        self._tables: dict[str, str] = {}
        #: the white-box steps :meth:`audit` has seen (each is audited once)
        self._audited: set[str] = set()
        #: (config file, overrides) -> its resolved config (:meth:`_config`)
        self._configs: dict[tuple[str, tuple[str, ...]], Any] = {}

    # -- naming
    @property
    def suffix(self) -> str:
        s = "" if self.scale == 1.0 else f"-x{self.scale:g}"
        return s + (f"-{self.substitute}" if self.substitute else "")

    @property
    def tag(self) -> str:
        """What a model's name carries after its config's: the scale, the substitute
        dataset and the seed."""
        return self.suffix + seed_tag(self.seed)

    def _add(self, step: Step) -> str:
        self.steps.setdefault(step.name, step)
        return step.name

    # -- training
    def _scaled(self, cfg, after: int = 0) -> list[str]:
        """Schedule overrides scaled by ``--scale``; ``after``: the iterations of the
        run this one continues (``init_mode: continue``), which it must outlast."""
        s = self.scale
        it = max(1, after + 1, round(cfg.optim.iterations * s))
        ms = sorted({round(m * s) for m in cfg.optim.lr_milestones if 0 < round(m * s) < it})
        return [f"optim.iterations={it}", f"optim.lr_milestones={ms}",
                f"adversarial.delay={round(cfg.adversarial.delay * s)}",
                f"checkpoint.every={max(1, min(cfg.checkpoint.every, round(it / 4)))}",
                f"log_every={max(1, min(cfg.log_every, round(it / 10)))}"]

    def _config(self, path: Path, overrides: Sequence[str]):
        """``load_config(path, overrides)``, read once per builder: every seed of a chain
        trains the same configs, which differ in their seed alone (:meth:`train`)."""
        from cascade_adv.training import load_config

        key = (str(path), tuple(overrides))
        if key not in self._configs:
            self._configs[key] = load_config(path, overrides)
        return self._configs[key]

    def train(self, config: str, *, name: str | None = None, overrides: Sequence[str] = (),
              experiment: str = "", params: dict | None = None) -> str:
        """The step that trains ``config`` (a name or a file under ``configs/``).  The
        config files are read once for all seeds: a seed's config is the first seed's
        with :func:`chain_seed` in its ``seed``."""
        import yaml

        from cascade_adv.training.config import training_identity

        rel = self.index.get(config, config)
        path = self.configs / rel
        if not path.is_file():
            raise CascadeAdvError(f"recipe config {config} not found under {self.configs}; "
                                  "pass --configs with the repository's configs folder")
        extra = list(overrides)
        if self.substitute:
            extra.append(f"data.dataset={self.substitute}")
        cfg = self._config(path, extra)
        seed = chain_seed(cfg.seed, self.seed) if self.seed else cfg.seed
        deps, params_extra, after = [], {}, 0
        if cfg.init_from:
            base = Path(cfg.init_from).name
            if base not in self.index:
                raise CascadeAdvError(f"{rel}: init_from {cfg.init_from} names no config")
            params_extra["init"] = self.train(self.index[base])
            deps.append(params_extra["init"])
            if cfg.init_mode == "continue":
                after = next(int(o.split("=")[1]) for o in
                             self.steps[params_extra["init"]].params["overrides"]
                             if o.startswith("optim.iterations="))
        sources = cfg.adversarial.sources or []
        saved = [s for s in sources if s.kind == "saved"]
        if saved:
            match = SAVED_SET.search(saved[0].paths[0]) if saved[0].paths else None
            if match is None or match["model"] not in self.index:
                raise CascadeAdvError(f"{rel}: saved source {saved[0].paths} names no config")
            params_extra["saved"] = self.craft(self.train(self.index[match["model"]]),
                                               eps_max=cfg.adversarial.max_e)
            params_extra["sources"] = [s.model_dump() for s in sources]
            deps.append(params_extra["saved"])
        model = f"{name or cfg.name}{self.tag}"
        scaled = self._scaled(cfg, after)
        all_over = [*extra, *([f"seed={seed}"] if self.seed else []), *scaled, f"name={model}"]
        # the key hashes what the run computes (the resolved config without its name,
        # paths and paper rows, equivalent losses written one way), not its name
        ident = self._config(path, [*extra, *scaled, "init_from=null",
                                    "adversarial.sources=null"]).model_copy(update={"seed": seed})
        identity = {"config": yaml.safe_dump(training_identity(ident), sort_keys=False),
                    "experiment": experiment, "params": params or {}}
        same = json.dumps([identity, deps], sort_keys=True)
        if same in self._trained:
            return self._share(self._trained[same], model, cfg.paper)
        step = Step(f"train/{model}", "train",
                    {"config": rel, "overrides": all_over, "experiment": experiment,
                     "params": {**(params or {}), "scale": self.scale},
                     "paper": list(cfg.paper), "also": [], **params_extra},
                    tuple(deps), identity=identity)
        self._trained[same] = self._add(step)
        return step.name

    def _share(self, name: str, model: str, paper: Sequence[str]) -> str:
        """Let the training step ``name`` stand for ``model`` too (the same computation):
        it takes the paper rows ``model``'s config names, and the report says so."""
        params = self.steps[name].params
        params["paper"] = list(dict.fromkeys([*params["paper"], *paper]))
        if name != f"train/{model}" and model not in params["also"]:
            params["also"].append(model)
        return name

    def seeds(self, seeds: Sequence[int]):
        """Iterate over ``seeds``, each time with :attr:`seed` set: the steps a recipe
        adds meanwhile train (and evaluate) that seed of every chain."""
        for j in seeds:
            self.seed = j
            yield j
        self.seed = 0

    def craft(self, model: str, eps_max: float) -> str:
        """iter_FGSM images of the training split at eps 1..max_e (N18 section 6); with
        ``--scale`` < 1 only that fraction of the split is attacked."""
        images = None if self.scale == 1.0 else max(256, round(50000 * self.scale))
        return self._add(Step(f"craft/{model.split('/', 1)[1]}", "craft",
                              {"model": model, "attack": "iter_fgsm",
                               "eps": [float(e) for e in range(1, int(eps_max) + 1)],
                               "images": images}, (model,)))

    # -- evaluation
    def whitebox(self, model: str, table: str | PaperTable | None = None, *,
                 attacks: Sequence[str] = (), eps: Sequence[float] = ()) -> str:
        """White-box rows of ``model`` for the columns of published ``table`` (its id),
        or of a recipe's layout (:attr:`Recipe.layout`)."""
        if table is not None:
            pub = table if isinstance(table, PaperTable) else get_table(table)
            table, cols = pub.id, pub.columns
            attacks = [a for a in dict.fromkeys(a for a, _ in cols) if a != CLEAN]
            eps = sorted({e for a, e in cols if a != CLEAN})
        name = f"whitebox/{model.split('/', 1)[1]}"
        if table is not None:
            self._tables[name] = table
        prev = self.steps.get(name)
        if prev is not None:  # one evaluation per model: the union of the columns asked for
            attacks = list(dict.fromkeys([*prev.params["attacks"], *attacks]))
            eps = sorted({*prev.params["eps"], *eps})
            del self.steps[name]
        return self._add(Step(name, "whitebox", {"model": model, "attacks": list(attacks),
                                                 "eps": [float(e) for e in eps],
                                                 "test_images": self.test_images}, (model,)))

    def audit(self, version: str, tables: Sequence[str], extra_eps: Sequence[float] = (),
              twin: str = "") -> list[str]:
        """An ``audit`` step (:func:`cascade_adv.experiments.steps.audit_step`) for the
        model of every white-box step built so far from one of the published ``tables``,
        at the step's epsilons and ``extra_eps``, on the same test images; where
        ``extra_eps`` adds epsilons, a ``whitebox`` step of the table's attacks there
        (``whitebox/MODEL@audit``), for ours beside the audit. Each depends on the
        model's training step, and on that of config ``twin`` (this seed's; the
        undefended twin of the diagnostics) for every model but the twin itself, so its
        key is the model's training identity (and the twin's), the audit's settings and
        the test images."""
        twin_step = self.train(twin) if twin else None
        out = []
        for name, table in self._tables.items():
            white = self.steps.get(name)
            if white is None or table not in tables or name in self._audited:
                continue
            self._audited.add(name)
            model, short = white.params["model"], name.split("/", 1)[1]
            extra = sorted({float(e) for e in extra_eps} - set(white.params["eps"]))
            if extra:
                self._add(Step(f"whitebox/{short}@audit", "whitebox", {
                    "model": model, "attacks": list(white.params["attacks"]), "eps": extra,
                    "test_images": self.test_images}, (model,)))
            paired = twin_step is not None and twin_step != model
            out.append(self._add(Step(f"audit/{short}", "audit", {
                "model": model, "version": version,
                "eps": sorted({*white.params["eps"], *extra}),
                "test_images": self.test_images, **({"twin": twin_step} if paired else {})},
                (model, twin_step) if paired else (model,))))
        return out

    def transfer(self, label: str, sources: Sequence[str], targets: Sequence[str],
                 table: str | None = None, *, attacks: Sequence[str] = (),
                 eps: Sequence[float] = ()) -> str:
        """Black-box rows of every source -> target for the columns of ``table``."""
        if table is not None:
            cols = get_table(table).columns
            attacks = list(dict.fromkeys(a for a, _ in cols))
            eps = sorted({e for _, e in cols})
        return self._add(Step(f"transfer/{label}{seed_tag(self.seed)}", "transfer", {
            "sources": list(sources), "targets": list(targets), "attacks": list(attacks),
            "eps": [float(e) for e in eps], "test_images": self.test_images},
            tuple(dict.fromkeys([*sources, *targets]))))

    def analysis(self, kind: str, model: str, **params: Any) -> str:
        return self._add(Step(f"{kind}/{model.split('/', 1)[1]}", "analysis",
                              {"analysis": kind, "model": model, "eps": list(FIGURE_EPS),
                               **params}, (model,)))

    def sweep(self, config: str, variants, experiment: str, table: str | None = None,
              **eval_kw: Any) -> list[str]:
        """One network per variant (``cascade_adv.analysis`` sweeps), evaluated.  A
        variant is not the published row its base config names: it names none (the
        recipe's ``rows`` map it)."""
        out = []
        for v in variants:
            m = self.train(config, name=f"{experiment}/{v.name}",
                           overrides=(*v.overrides, "paper=[]"),
                           experiment=f"{experiment}{self.tag}", params=v.params)
            out.append(self.whitebox(m, table, **eval_kw))
        return out


# --- recipes ----------------------------------------------------------------------------------

def _whitebox_rows(configs: Sequence[str], table: str | PaperTable
                   ) -> Callable[[Builder], None]:
    def build(b: Builder) -> None:
        for c in configs:
            b.whitebox(b.train(c), table)
    return build


# the released pivot before the bidirectional row: they train the same thing, and the
# one model that stands for both carries the released code's name
N18_T1 = ["n18_mnist_baseline", "n18_mnist_kurakin", "n18_mnist_pivot-released",
          "n18_mnist_bidirection", "n18_mnist_pivot"]
N18_T2_STEP_LL = ["n18_cifar10_baseline", "n18_cifar10_step_ll_kurakin",
                  "n18_cifar10_step_ll_pivot-released", "n18_cifar10_step_ll_bidirection",
                  "n18_cifar10_step_ll_pivot"]
N18_T2 = N18_T2_STEP_LL + [
    "n18_cifar10_step_fgsm_kurakin", "n18_cifar10_step_fgsm_pivot",
    "n18_cifar10_step_fgsm_pivot-released", "n18_cifar10_step_both_kurakin",
    "n18_cifar10_step_both_pivot", "n18_cifar10_step_both_pivot-released"]
N18_T5 = ["n18_cifar10_step_ll_pivot", "n18_cifar10_cascade_pivot", "n18_cifar10_cascade_kurakin",
          "n18_cifar10_cascade_pivot-released"]
N18_T6 = ["n18_cifar10_resnet110_step_ll_pivot", "n18_cifar10_resnet110_cascade_pivot",
          "n18_cifar10_resnet110_cascade_kurakin", "n18_cifar10_resnet110_cascade_pivot-released"]
B1 = ["n18_cifar10_baseline", "n18_cifar10_step_ll_kurakin", "n18_cifar10_step_ll_pivot"]
B2 = ["n18_cifar10_B2", "n18_cifar10_K2", "n18_cifar10_P2"]
C1 = ["n18_cifar10_cascade_kurakin", "n18_cifar10_cascade_pivot",
      "n18_cifar10_resnet110_cascade_kurakin", "n18_cifar10_resnet110_cascade_pivot"]
C2 = ["n18_cifar10_K2C", "n18_cifar10_P2C", "n18_cifar10_K4C", "n18_cifar10_P4C"]


def _by_dataset(mnist: Sequence[str], cifar10: Sequence[str]) -> Callable[[Builder], list]:
    return lambda b: list(mnist if b.dataset == "mnist" else cifar10)


# the paper's pivot and the released code's (docs/fidelity.md) side by side
_FIG_MODELS = _by_dataset(
    ["n18_mnist_kurakin", "n18_mnist_pivot", "n18_mnist_pivot-released"],
    ["n18_cifar10_step_ll_kurakin", "n18_cifar10_step_ll_pivot",
     "n18_cifar10_step_ll_pivot-released"])
_FIG5_MODELS = _by_dataset(
    ["n18_mnist_baseline", "n18_mnist_kurakin", "n18_mnist_pivot", "n18_mnist_pivot-released"],
    [*B1, "n18_cifar10_step_ll_pivot-released"])


def _figure(kind: str, models: Callable[[Builder], list], **params: Any):
    def build(b: Builder) -> None:
        for c in models(b):
            b.analysis(kind, b.train(c), **params)
    return build


def _transfer(targets: Sequence[str], sources: Sequence[str], table: str):
    def build(b: Builder) -> None:
        b.transfer(table, [b.train(c) for c in sources], [b.train(c) for c in targets], table)
    return build


def _seeds(b: Builder) -> None:
    from cascade_adv.analysis import seed_variants

    for config, label in (("n18_cifar10_step_ll_kurakin", "n18_t3_kurakin"),
                          ("n18_cifar10_step_ll_pivot", "n18_t3_pivot")):
        b.sweep(config, seed_variants(range(1, 21)), label, "n18-table3")


def _lambda2(b: Builder) -> None:
    """Both pivots: the paper's (detached; diverges at the larger lambda2 at N18's
    learning rate) and the released code's, with which the published figure was made."""
    from cascade_adv.analysis import lambda2_variants

    values = lambda2_variants([0, 1e-4, 1e-3, 1e-2, 0.1, 0.3])
    b.sweep("n18_cifar10_step_ll_pivot", values, "n18_fig3_lambda2", "n18-table2")
    b.sweep("n18_cifar10_step_ll_pivot-released", values, "n18_fig3_lambda2_released",
            "n18-table2")


#: K17 table 1's "deeper model" rows at CIFAR-10 scale: ResNet-56 for ResNet-20, each
#: from its own random start (the shared ResNet-20 pre-training does not fit it).
_DEEPER = {"k17_cifar10_baseline": ("k17_cifar10_deeper_baseline",
                                    "Deeper model (standard training)"),
           "k17_cifar10_step_ll": ("k17_cifar10_deeper_step_ll", "Deeper model (Adv. training)")}


def _k17_imagenet(imagenet: Sequence[str], table: str):
    def build(b: Builder) -> None:
        configs = (imagenet if b.dataset == "imagenet"
                   else ["k17_cifar10_baseline", "k17_cifar10_step_ll"])
        for c in configs:
            b.whitebox(b.train(c), table)
        if table == "k17-table1" and b.dataset != "imagenet":
            for c, (name, row) in _DEEPER.items():
                b.whitebox(b.train(c, name=name, overrides=(
                    "model.depth=56", "init_from=null", f'paper=["k17-table1: {row}"]')), table)
    return build


def _k17_label_leaking(b: Builder) -> None:
    from cascade_adv.analysis import label_leaking_variants

    config = "k17_imagenet_step_ll" if b.dataset == "imagenet" else "k17_cifar10_step_ll"
    b.sweep(config, label_leaking_variants(), "k17_t3_label_leaking", "k17-table3")


#: K17 tables 4 and 6 at CIFAR-10 scale: A and B two initialisations of the baseline,
#: C with ELU, D another (deeper) architecture, as Inception v3 / v3 ELU / v4 in K17;
#: each trained from its own random start (no shared pre-training, which C and D could
#: not load).
def _scratch(model: str, *overrides: str) -> tuple[str, ...]:
    return (*overrides, "init_from=null",
            f'paper=["k17-table4: {model}", "k17-table6: {model}"]')


_ABCD = {"k17_cifar10_A": _scratch("A", "seed=0"), "k17_cifar10_B": _scratch("B", "seed=1"),
         "k17_cifar10_C": _scratch("C", "seed=2", "model.activation=elu"),
         "k17_cifar10_D": _scratch("D", "seed=3", "model.depth=56")}


def _abcd(b: Builder, names: Sequence[str] = tuple(_ABCD)) -> list[str]:
    return [b.train("k17_cifar10_baseline", name=n, overrides=_ABCD[n]) for n in names]


def _k17_transfer(table: str):
    def build(b: Builder) -> None:
        models = _abcd(b)
        b.transfer(table, models, models, table)
    return build


def _k17_capacity(b: Builder) -> None:
    from cascade_adv.analysis import capacity_variants

    b.sweep("k17_cifar10_step_ll", capacity_variants([0.5, 1, 2]), "k17_capacity",
            attacks=("step_ll", "step_fgsm", "iter_fgsm", "iter_ll"), eps=(16,))


def _k17_activations(b: Builder) -> None:
    from cascade_adv.analysis import activation_variants

    b.sweep("k17_cifar10_step_ll", activation_variants(), "k17_t7_activations", "k17-table7")


def _k17_transfer_eps(b: Builder) -> None:
    a, c = _abcd(b, ("k17_cifar10_A", "k17_cifar10_B"))
    b.transfer("k17-transfer-eps", [a], [c], attacks=("step_fgsm", "iter_fgsm", "iter_ll"),
               eps=(2, 4, 8, 16))


def _k17_fig3(b: Builder) -> None:
    m = b.train("k17_cifar10_step_ll")
    b.whitebox(m, attacks=("step_ll", "step_fgsm", "fgsm_pred", "fast_entropy", "step_rnd",
                           "fast_grad_l2", "fast_grad_linf", "random_sign", "random_normal"),
               eps=(2, 4, 8, 16))


_c = Claim  # short, for the tables below


ONE = ("step_ll", "step_fgsm")
ITER = ("iter_ll", "iter_fgsm")

# --- beyond the papers -------------------------------------------------------------------------

#: beyond-n18-mnist: config -> its row. Kurakin's and the released Pivot as n18-table1
#: trains them (the same steps and cache keys: a cache that ran n18-table1 has them),
#: then the same two trained with each crafting method with a random start
#: (configs/beyond/, only ``adversarial.method`` and its options differ).
BEYOND_ROWS = {
    "n18_mnist_kurakin": "step_ll, Kurakin's",
    "n18_mnist_pivot-released": "step_ll, Pivot",
    "beyond_mnist_kurakin_r_step_ll": "r_step_ll, Kurakin's",
    "beyond_mnist_pivot_r_step_ll": "r_step_ll, Pivot",
    "beyond_mnist_kurakin_fgsm_rs": "fgsm_rs, Kurakin's",
    "beyond_mnist_pivot_fgsm_rs": "fgsm_rs, Pivot",
    "beyond_mnist_pgd": "pgd, Kurakin's",
    "beyond_mnist_pgd_pivot": "pgd, Pivot",
}
#: The crafting methods of its rows, step_ll (K17's, N18's) first.
BEYOND_METHODS = ("step_ll", "r_step_ll", "fgsm_rs", "pgd")
BEYOND_LAYOUT = layout(
    "n18-table1", "beyond-n18-mnist",
    "N18 table 1's MNIST setting with other crafting methods",
    list(BEYOND_ROWS.values()),
    notes=("20-layer ResNet, N18 table 1's schedule (one schedule of 8000 iterations that "
           "continues the shared 938-iteration pre-training; --scale shortens both), m 128, "
           "k 64, max_e 32, every row on that one schedule (PGD included). Kurakin's: K17 "
           "replace mode, no distance loss; Pivot: the released code's pivot loss (N18 "
           "append mode). Crafting: step_ll (the papers'), r_step_ll (R+Step-LL, Tramer et "
           "al. 2018), fgsm_rs (FGSM from a uniform random start, Wong et al. 2020; with the "
           "catastrophic-overfitting monitor every 200 iterations), pgd (10 steps of 0.25 eps "
           "from a random start, Madry et al. 2018)."))


def _embedding_claim(method: str) -> Claim:
    return Claim(f"{method}: the embedding beats Kurakin's (Pivot above Kurakin's under "
                 "iterative attacks)",
                 {"row": f"{method}, Pivot", "attack": ITER},
                 {"row": f"{method}, Kurakin's", "attack": ITER})


def _masking_claim(method: str) -> Claim:
    return Claim(f"{method}: random start removes the masking (iter_FGSM - audit gap of "
                 f"step_ll, Kurakin's above that of {method}, Kurakin's)",
                 {"row": "step_ll, Kurakin's"}, {"row": f"{method}, Kurakin's"},
                 gap="iter_fgsm")


BEYOND_CLAIMS = (*map(_embedding_claim, BEYOND_METHODS),
                 *map(_masking_claim, BEYOND_METHODS[1:]))

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("n18-table1", "N18 table 1: MNIST, white-box", ("mnist",),
           _whitebox_rows(N18_T1, "n18-table1"), ("n18-table1",), (
               _c("Kurakin's above Baseline under one-step attacks",
                  {"row": "Kurakin's", "attack": ONE}, {"row": "Baseline", "attack": ONE}),
               _c("Pivot above Kurakin's under iterative attacks",
                  {"row": "Pivot", "attack": ITER}, {"row": "Kurakin's", "attack": ITER}),
               _c("Bidirection above Kurakin's under iterative attacks",
                  {"row": "Bidirection", "attack": ITER}, {"row": "Kurakin's", "attack": ITER}),
           ), audit_eps=(76.5,),    # 0.3 x 255: MNIST's customary eps (Madry et al., AutoAttack)
           audit_twin="n18_mnist_baseline"),
    Recipe("n18-table2", "N18 table 2: CIFAR-10, white-box, 8 training settings", ("cifar10",),
           _whitebox_rows(N18_T2, "n18-table2"), ("n18-table2",), (
               _c("step_ll, Kurakin's above Baseline under one-step attacks",
                  {"row": "step_ll, Kurakin's", "attack": ONE},
                  {"row": "Baseline", "attack": ONE}),
               _c("step_ll, Pivot above step_ll, Kurakin's under iterative attacks",
                  {"row": "step_ll, Pivot", "attack": ITER},
                  {"row": "step_ll, Kurakin's", "attack": ITER}),
               _c("step_ll, Bidirection above step_ll, Kurakin's under iterative attacks",
                  {"row": "step_ll, Bidirection", "attack": ITER},
                  {"row": "step_ll, Kurakin's", "attack": ITER}),
           ), note="--only step_ll,baseline limits it to the step_ll rows and Baseline",
           audit_twin="n18_cifar10_baseline"),
    Recipe("n18-table3", "N18 table 3: 20 networks each of Kurakin's and Pivot, mean +- std",
           ("cifar10",), _seeds, ("n18-table3",), (
               _c("Pivot's mean above Kurakin's under step_ll and iter_ll at eps 4 and 16",
                  {"row": "Pivot", "attack": ("step_ll", "iter_ll"), "metric": "top1_mean"},
                  {"row": "Kurakin's", "attack": ("step_ll", "iter_ll"),
                   "metric": "top1_mean"}),),
           rows={"n18_t3_kurakin": "Kurakin's", "n18_t3_pivot": "Pivot"}),
    Recipe("n18-table4", "N18 table 4: black-box, sources B2/K2/P2 -> targets B1/K1/P1",
           ("cifar10",), _transfer(B1, B2, "n18-table4"), ("n18-table4",), (
               _c("iter_ll transfers less than iter_FGSM",
                  {"attack": "iter_ll"}, {"attack": "iter_fgsm"}),
               _c("iter_FGSM from a defended source (K2, P2) is stronger against K1 / P1 "
                  "than from the undefended B2",
                  {"row": ("K1", "P1"), "source": "B2", "attack": "iter_fgsm"},
                  {"row": ("K1", "P1"), "source": ("K2", "P2"), "attack": "iter_fgsm"}),)),
    Recipe("n18-table5", "N18 table 5: cascade adversarial training, ResNet-20", ("cifar10",),
           _whitebox_rows(N18_T5, "n18-table5"), ("n18-table5",), (
               _c("cascade raises iterative accuracy (saved_P2, P above P)",
                  {"row": "step_ll, saved_P2, P", "attack": ITER},
                  {"row": "step_ll, P", "attack": ITER}),)),
    Recipe("n18-table6", "N18 table 6: cascade adversarial training, ResNet-110", ("cifar10",),
           _whitebox_rows(N18_T6, "n18-table6"), ("n18-table6",), (
               _c("cascade raises iterative accuracy (saved_P2, P above P)",
                  {"row": "step_ll, saved_P2, P", "attack": ITER},
                  {"row": "step_ll, P", "attack": ITER}),)),
    Recipe("n18-table7", "N18 table 7: black-box against the cascade networks", ("cifar10",),
           _transfer(C1, B2 + C2, "n18-table7"), ("n18-table7",), (
               _c("step_FGSM from B2 transfers less than iter_FGSM from B2",
                  {"attack": "step_fgsm", "source": "B2"},
                  {"attack": "iter_fgsm", "source": "B2"}),)),
    Recipe("n18-table8", "N18 table 8: black-box between B1/K1/P1 (same initialisation)",
           ("cifar10",), _transfer(B1, B1, "n18-table8"), ("n18-table8",), (
               _c("iter_ll transfers less than iter_FGSM",
                  {"attack": "iter_ll"}, {"attack": "iter_fgsm"}),)),
    Recipe("n18-table9", "N18 table 9: black-box, sources B1/K1/P1 -> targets B2/K2/P2",
           ("cifar10",), _transfer(B2, B1, "n18-table9"), ("n18-table9",), (
               _c("iter_ll transfers less than iter_FGSM",
                  {"attack": "iter_ll"}, {"attack": "iter_fgsm"}),)),
    Recipe("n18-table10", "N18 table 10: black-box between cascade networks", ("cifar10",),
           _transfer(C2, ["n18_cifar10_baseline"] + C1 + C2, "n18-table10"), ("n18-table10",), (
               _c("with similarity learning (P2C, P4C) above without (K2C, K4C) under "
                  "iter_FGSM from the sources all four face",
                  {"row": ("P2C", "P4C"), "source": ("B1", "K1C", "P1C", "K3C", "P3C")},
                  {"row": ("K2C", "K4C"), "source": ("B1", "K1C", "P1C", "K3C", "P3C")}),)),
    Recipe("n18-figure3", "N18 figure 3: accuracy vs lambda2 (step_ll, Pivot)", ("cifar10",),
           _lambda2),
    Recipe("n18-figure4", "N18 figure 4: argument to the softmax along step_ll",
           ("cifar10", "mnist"), _figure("softmax", _FIG_MODELS, methods=["step_ll"])),
    Recipe("n18-figure5", "N18 figure 5: correlation of input gradients", ("cifar10", "mnist"),
           _figure("gradcorr", _FIG5_MODELS)),
    Recipe("n18-figure6", "N18 figure 6: argument to the softmax along step_ll, step_FGSM, "
           "random sign", ("cifar10", "mnist"),
           _figure("softmax", _FIG_MODELS, methods=["step_ll", "step_fgsm", "random_sign"])),
    Recipe("k17-table1", "K17 table 1: adversarial training, one-step attacks",
           ("imagenet", "cifar10"),
           _k17_imagenet(["k17_imagenet_baseline", "k17_imagenet_step_ll"], "k17-table1"),
           ("k17-table1",), (
               _c("adversarial training above the baseline under step l.l.",
                  {"row": "Adv. training", "attack": "step_ll"},
                  {"row": "Baseline (standard training)", "attack": "step_ll"}),)),
    Recipe("k17-table2", "K17 table 2: adversarial training, iterative attacks",
           ("imagenet", "cifar10"),
           _k17_imagenet(["k17_imagenet_baseline", "k17_imagenet_step_ll"],
                         "k17-table2"), ("k17-table2",), (
               _c("iterative attacks stay strong: the adversarially trained network's "
                  "iter_FGSM accuracy stays below its clean accuracy",
                  {"row": "Adv. training", "attack": "clean"},
                  {"row": "Adv. training", "attack": "iter_fgsm"}),)),
    Recipe("k17-table3", "K17 table 3: label leaking", ("imagenet", "cifar10"),
           _k17_label_leaking, ("k17-table3",), (
               _c("label leaking: FGSM-trained accuracy on FGSM images above its clean accuracy",
                  {"row": "With label leaking, training and eval using FGSM",
                   "attack": "step_fgsm", "eps": (8.0, 16.0)},
                  {"row": "With label leaking, training and eval using FGSM",
                   "attack": "clean"}),),
           rows={"k17_t3_label_leaking/train=step_fgsm":
                 "With label leaking, training and eval using FGSM",
                 "k17_t3_label_leaking/train=step_ll":
                 "No label leaking, training and eval using step l.l."}),
    Recipe("k17-table4", "K17 table 4: transfer rate between models A-D", ("cifar10",),
           _k17_transfer("k17-table4"), ("k17-table4",), (
               _c("one-step FGSM transfers more than iter l.l.",
                  {"attack": "step_fgsm", "metric": "transfer_top1"},
                  {"attack": "iter_ll", "metric": "transfer_top1"}),)),
    Recipe("k17-table5", "K17 table 5: one-step methods for adversarial training", ("cifar10",),
           _whitebox_rows(["k17_cifar10_baseline", "k17_cifar10_step_ll", "k17_cifar10_step_fgsm",
                           "k17_cifar10_fgsm_pred", "k17_cifar10_fast_entropy",
                           "k17_cifar10_step_rnd", "k17_cifar10_fast_grad_l2",
                           "k17_cifar10_fast_grad_linf", "k17_cifar10_random_sign",
                           "k17_cifar10_random_normal"], "k17-table5"), ("k17-table5",), (
               _c("step l.l. training above no adversarial training under FGSM",
                  {"row": "Step l.l.", "attack": "step_fgsm"},
                  {"row": "No adversarial training", "attack": "step_fgsm"}),)),
    Recipe("k17-table6", "K17 table 6: error rate of transferred examples, models A-D",
           ("cifar10",), _k17_transfer("k17-table6"), ("k17-table6",), (
               _c("FGSM examples are misclassified more often than iter l.l. ones",
                  {"attack": "step_fgsm", "metric": "error_top1"},
                  {"attack": "iter_ll", "metric": "error_top1"}),)),
    Recipe("k17-table7", "K17 table 7: activation functions", ("cifar10",),
           _k17_activations, ("k17-table7",),
           rows={f"k17_t7_activations/act={a}": a.replace("relu_decay:", "ReluDecay")
                 for a in ("relu", "relu6", "relu_decay:0.001", "relu_decay:0.01",
                           "relu_decay:0.1", "tanh")}),
    Recipe("k17-figure1", "K17 figures 1 and 4: model capacity (top-1 and top-5)",
           ("cifar10",), _k17_capacity),
    Recipe("k17-figure2", "K17 figures 2 and 5: transfer rate and error rate vs eps",
           ("cifar10",), _k17_transfer_eps),
    Recipe("k17-figure3", "K17 figure 3: one-step methods at evaluation, step l.l. training",
           ("cifar10",), _k17_fig3),
    Recipe("beyond-n18-mnist", "Beyond the papers: N18 table 1 (MNIST) with R+Step-LL, "
           "FGSM with a random start and PGD", ("mnist",),
           _whitebox_rows(list(BEYOND_ROWS), BEYOND_LAYOUT), claims=BEYOND_CLAIMS,
           rows=BEYOND_ROWS, audit_eps=(76.5,), audit_twin="n18_mnist_baseline",
           layout=BEYOND_LAYOUT, cost_reference="step_ll, Kurakin's",
           note="no published numbers: the report shows ours alone, the training costs "
                "relative to Kurakin's and the claims on the seed means"),
]}
#: K17's figures 4 and 5 are the top-5 / error-rate panels of figures 1 and 2.
ALIASES = {"k17-figure4": "k17-figure1", "k17-figure5": "k17-figure2"}


def get_recipe(name: str) -> Recipe:
    key = ALIASES.get(name, name)
    if key not in RECIPES:
        raise InvalidArgument(f"unknown recipe {name!r}; the recipes are: "
                              f"{', '.join([*RECIPES, *ALIASES])} (cascade-adv reproduce --list)")
    return RECIPES[key]


def check_audit(recipe: Recipe, audit: str | None, seeds: Sequence[int] = (0,)) -> None:
    """``--audit`` needs a white-box table to audit the models of, and with several
    ``seeds`` an undefended twin (:attr:`Recipe.audit_twin`) for every seed's transfer
    diagnostic: an :class:`InvalidArgument` naming the recipes that have them otherwise;
    an unknown version raises :class:`~cascade_adv.errors.UnknownAttackError`."""
    if audit is None:
        return
    from cascade_adv.evaluation.audit import resolve_version

    if not isinstance(audit, str):
        raise InvalidArgument(f"audit is an audit version, standard or quick (or attacks as "
                              f"cascade-adv audit --version takes them), got {audit!r}")
    resolve_version(audit)
    if not recipe.whitebox_tables:
        kinds = {"blackbox": "black-box", "transfer": "transfer-rate"}
        what = (", ".join(f"{t} is a {kinds.get(get_table(t).kind, get_table(t).kind)} "
                          "table" for t in recipe.tables)
                if recipe.tables else "it is a figure")
        with_table = [n for n, r in RECIPES.items() if r.whitebox_tables]
        raise InvalidArgument(
            f"--audit audits the models of a white-box table and {recipe.name} has none "
            f"({what}); drop --audit, or use it with {', '.join(with_table)}")
    if len(seeds) > 1 and not recipe.audit_twin:
        with_twin = [n for n, r in RECIPES.items() if r.audit_twin]
        raise InvalidArgument(
            f"--seeds with --audit judges every seed's audit beside its own undefended twin "
            f"(the transfer diagnostic) and {recipe.name} names none; audit one seed, or use "
            f"--seeds with --audit on {', '.join(with_twin)}")


def build_steps(recipe: Recipe, builder: Builder, only: str | Sequence[str] = (),
                seeds: Sequence[int] = (0,), audit: str | None = None,
                seeds_for: str | Sequence[str] = ()) -> list[Step]:
    """The recipe's steps for every seed in ``seeds`` (each trains the whole chain of
    every configuration again, pre-training included, :func:`chain_seed`), and with
    ``only`` just the models whose config name contains one of the given strings (and
    what they need). With ``seeds_for`` (such strings too), only those models train the
    seeds after the first; every other model trains the first seed alone. ``audit`` (an
    audit version, e.g. ``"standard"``) adds the audit of every model of the recipe's
    white-box tables (:meth:`Builder.audit`), after each seed's evaluations; a recipe
    without one is refused (:func:`check_audit`)."""
    check_audit(recipe, audit, seeds)
    only, seeds_for = name_list(only), name_list(seeds_for)
    if seeds_for and len(seeds) < 2:
        raise InvalidArgument(f"--seeds-for {','.join(seeds_for)} picks the models that "
                              "train the extra seeds; give two or more --seeds (e.g. 3)")
    first: set[str] = set()
    for _ in builder.seeds(seeds):
        recipe.build(builder)
        if audit is not None:
            builder.audit(audit, recipe.whitebox_tables, recipe.audit_eps, recipe.audit_twin)
        if not first:
            first = set(builder.steps)
    steps = builder.steps
    if seeds_for:
        more = _needed(steps, seeds_for, recipe.name, "--seeds-for")
        steps = {n: s for n, s in steps.items() if n in first or n in more}
    if only:
        keep = _needed(steps, only, recipe.name, "--only")
        steps = {n: s for n, s in steps.items() if n in keep}
    return list(steps.values())


def name_list(value: str | Sequence[str]) -> list[str]:
    """``only`` / ``seeds_for``: one name or a sequence of them."""
    return [value] if isinstance(value, str) else list(value)


def _needed(steps: Mapping[str, Step], names: Sequence[str], recipe: str, option: str
            ) -> set[str]:
    """The steps that concern only the models whose name (or a name it stands for)
    contains one of ``names``, with every step they depend on."""
    models = {n for n, s in steps.items() if s.kind == "train" and any(
        o in m for o in names for m in (n, *s.params.get("also", ())))}
    wanted = [n for n, s in steps.items() if s.kind != "train" and
              all(d in models or steps[d].kind != "train" or d == s.params.get("twin")
                  for d in s.deps)]
    if not wanted:
        raise InvalidArgument(f"{option} {','.join(names)} matches no model of {recipe}")
    keep: set[str] = set()

    def visit(n: str) -> None:
        if n not in keep:
            keep.add(n)
            for d in steps[n].deps:
                visit(d)

    for n in wanted:
        visit(n)
    return keep
