"""The published tables (experiments/published.py) and their rendering (reporting/paper_tables.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cascade_adv.errors import CascadeAdvError
from cascade_adv.reporting.paper_tables import (
    DAGGER,
    SAME_INIT_NOTE,
    layout_columns,
    mean_std_cells,
    render_blackbox,
    render_mean_std,
    render_paper_table,
    render_whitebox,
)
from cascade_adv.results.published import (
    PUBLISHED,
    PaperTable,
    blackbox_label,
    get_table,
    paper_row,
    same_init_by_number,
    split_paper_entry,
    whitebox_rows,
)
from cascade_adv.results.tables import ROW_KEYS, ResultTable, normalize_row

N18_IDS = [f"n18-table{i}" for i in range(1, 11)]
K17_IDS = [f"k17-table{i}" for i in range(1, 8)]


# --- spot checks against the paper text ---------------------------------------------------------

# (table, row label, source or None, attack, eps, metric, value), read off the papers.
SPOT = [
    ("n18-table1", "Pivot", None, "iter_fgsm", 32, "top1", 96.4),
    ("n18-table1", "Bidirection", None, "iter_fgsm", 32, "top1", 96.5),
    ("n18-table1", "Baseline", None, "step_ll", 32, "top1", 30.2),
    ("n18-table1", "Kurakin's", None, "clean", 0, "top1", 99.6),
    ("n18-table2", "step_ll, Kurakin's", None, "step_fgsm", 16, "top1", 81.5),
    ("n18-table2", "step_both, Pivot", None, "iter_ll", 8, "top1", 44.0),
    ("n18-table2", "step_FGSM, Kurakin's", None, "step_fgsm", 4, "top1", 92.2),
    ("n18-table2", "Baseline", None, "iter_fgsm", 2, "top1", 14.0),
    ("n18-table3", "Pivot", None, "step_ll", 16, "top1_mean", 87.8),
    ("n18-table3", "Pivot", None, "step_ll", 16, "top1_std", 0.82),
    ("n18-table3", "Kurakin's", None, "iter_ll", 4, "top1_std", 2.89),
    ("n18-table3", "Kurakin's", None, "iter_ll", 16, "top1_mean", 16.3),
    ("n18-table4", "P1", "B2", "iter_fgsm", 16, "top1", 52.0),
    ("n18-table4", "B1", "K2", "step_fgsm", 16, "top1", 31.6),
    ("n18-table4", "K1", "P2", "iter_ll", 16, "top1", 82.5),
    ("n18-table5", "step_ll, saved_P2, P", None, "iter_fgsm", 16, "top1", 9.7),
    ("n18-table5", "step_ll, saved_P2, K", None, "step_fgsm", 2, "top1", 80.2),
    ("n18-table5", "step_ll, P", None, "clean", 0, "top1", 90.9),
    ("n18-table6", "step_ll, saved_P2, P", None, "iter_fgsm", 16, "top1", 19.5),
    ("n18-table6", "step_ll, P", None, "step_ll", 16, "top1", 89.4),
    ("n18-table6", "step_ll, saved_P2, K", None, "iter_ll", 8, "top1", 56.4),
    ("n18-table7", "K1C", "B2", "step_fgsm", 16, "top1", 60.2),
    ("n18-table7", "P3C", "P4C", "iter_fgsm", 16, "top1", 83.5),
    ("n18-table7", "K3C", "K2C", "iter_fgsm", 16, "top1", 58.3),
    ("n18-table8", "K1", "K1", "iter_ll", 16, "top1", 16.8),
    ("n18-table8", "P1", "K1", "iter_fgsm", 16, "top1", 13.4),
    ("n18-table8", "B1", "P1", "step_fgsm", 16, "top1", 27.5),
    ("n18-table9", "B2", "B1", "iter_fgsm", 16, "top1", 4.1),
    ("n18-table9", "P2", "P1", "iter_fgsm", 16, "top1", 36.1),
    ("n18-table9", "K2", "K1", "step_fgsm", 16, "top1", 84.6),
    ("n18-table10", "K2C", "B1", "iter_fgsm", 16, "top1", 41.2),
    ("n18-table10", "P4C", "B1", "iter_fgsm", 16, "top1", 76.4),
    ("n18-table10", "K4C", "P2C", "iter_fgsm", 16, "top1", 68.7),
    ("k17-table1", "Adv. training", None, "step_ll", 16, "top1", 73.9),
    ("k17-table1", "Baseline (standard training)", None, "clean", 0, "top5", 94.0),
    ("k17-table1", "Deeper model (Adv. training)", None, "step_ll", 2, "top5", 92.6),
    ("k17-table2", "Adv. training", None, "iter_ll", 2, "top1", 29.1),
    ("k17-table2", "Baseline", None, "iter_fgsm", 16, "top5", 28.8),
    ("k17-table2", "Baseline", None, "clean", 0, "top1", 78.3),
    ("k17-table3", "With label leaking, training and eval using FGSM", None, "step_fgsm", 8,
     "top1", 88.7),
    ("k17-table3", "No label leaking, training and eval using step l.l.", None, "step_ll", 16,
     "top5", 90.3),
    ("k17-table3", "With label leaking, training and eval using FGSM", None, "clean", 0, "top5",
     93.2),
    ("k17-table4", "B", "A", "step_fgsm", 16, "transfer_top1", 56),
    ("k17-table4", "D", "C", "iter_fgsm", 16, "transfer_top5", 13),
    ("k17-table4", "A", "B", "iter_ll", 16, "transfer_top1", 15),
    ("k17-table5", "Step rnd.", None, "step_fgsm", 8, "top1", 76.5),
    ("k17-table5", "Fast grad. L∞", None, "step_ll", 2, "top1", 52.2),
    ("k17-table5", "FGSM", None, "clean", 0, "top1", 74.9),
    ("k17-table6", "B", "A", "step_fgsm", 16, "error_top1", 52),
    ("k17-table6", "B", "B", "iter_ll", 16, "error_top1", 99),
    ("k17-table6", "C", "D", "iter_fgsm", 16, "error_top5", 16),
    ("k17-table7", "tanh", None, "iter_ll", 16, "top1", 0.9),
    ("k17-table7", "ReluDecay0.1", None, "iter_fgsm", 2, "top1", 26.7),
    ("k17-table7", "relu6", None, "step_ll", 4, "top1", 73.5),
]


@pytest.mark.parametrize("tid,row,source,attack,eps,metric,value", SPOT)
def test_spot_values(tid, row, source, attack, eps, metric, value):
    assert get_table(tid).value(row, attack, eps, metric=metric, source=source) == value


def test_every_table_spot_checked_three_times():
    counts = {tid: sum(1 for s in SPOT if s[0] == tid) for tid in PUBLISHED}
    assert set(PUBLISHED) == set(N18_IDS + K17_IDS)
    assert all(c >= 3 for c in counts.values()), counts


def _paper_text(name: str) -> str | None:
    here = Path(__file__).resolve().parent.parent
    for base in (here / "shared" / "papers", here.parent / "shared" / "papers"):
        if (base / name).exists():
            text = (base / name).read_text(encoding="utf-8", errors="replace")
            text = text.replace("\ufffd", "")  # K17 table 5 marks bold numbers with junk
            return re.sub(r"\s+", " ", text)
    return None


def _printed_blocks(t: PaperTable):
    """The runs of numbers each table prints on one line, rebuilt from our rows."""
    def pct(v, metric):
        if t.paper == "N18":
            return "-" if v is None else f"{v:.1f}" if "std" not in metric else f"{v:.2f}"
        if t.kind in ("transfer", "blackbox"):
            return f"{v:.0f}"
        return f"{v:.1f}%"

    attacks = list(dict.fromkeys(a for a, _ in t.columns if a != "clean"))
    for metric in t.metrics:
        if t.kind == "mean_std":
            for row in t.row_order:
                yield " ".join(
                    f"{t.value(row, a, e, metric='top1_mean'):.1f} ± "
                    f"{t.value(row, a, e, metric='top1_std'):.2f}" for a, e in t.columns)
            return
        if t.kind in ("blackbox", "transfer"):
            if t.paper == "K17":  # printed source-major
                for src in t.sources:
                    yield " ".join(pct(t.value(tgt, a, e, metric, src), metric)
                                   for a, e in t.columns for tgt in t.row_order)
            else:
                for tgt in t.row_order:
                    yield " ".join(pct(t.value(tgt, a, e, metric, src), metric)
                                   for a, e in t.columns for src in t.sources)
            continue
        if t.id in ("n18-table1", "k17-table1"):
            blocks = [attacks]
        elif t.paper == "N18":
            blocks = [attacks[:2], attacks[2:]]
        else:
            blocks = [[a] for a in attacks]
        for row in t.row_order:
            for block in blocks:
                cols = [("clean", 0.0)] + [c for c in t.columns if c[0] in block]
                vals = [t.value(row, a, e, metric) for a, e in cols]
                if any(v is None for v in vals):
                    continue  # K17 tables 3 and 5: the row's other attack
                yield " ".join(pct(v, metric) for v in vals)


@pytest.mark.parametrize("tid", N18_IDS + K17_IDS)
def test_rows_appear_verbatim_in_the_paper_text(tid):
    t = get_table(tid)
    text = _paper_text("na-2018-cascade-adversarial-ml.txt" if t.paper == "N18"
                       else "kurakin-2017-adversarial-ml-at-scale.txt")
    if text is None:
        pytest.skip("paper texts not available")
    blocks = list(_printed_blocks(t))
    assert blocks
    for block in blocks:
        assert block in text, f"{tid}: {block!r} not in the paper text"


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tid", N18_IDS + K17_IDS)
def test_rows_cover_the_grid(tid):
    t = get_table(tid)
    assert t.id == tid and t.paper in ("N18", "K17") and tid.endswith(f"table{t.number}")
    assert t.kind in ("whitebox", "blackbox", "transfer", "mean_std")
    assert t.dataset in ("mnist", "cifar10", "imagenet")
    have = [(r["model"], r["source"], r["attack"], r["eps"], r["metric"]) for r in t.rows]
    assert len(have) == len(set(have)), "duplicate cells"
    grid = t.grid()
    assert set(have) | set(t.holes) == set(grid)
    assert not set(have) & set(t.holes)
    for r in t.rows:
        assert normalize_row(r) == r and list(r) == list(ROW_KEYS)
        assert r["n"] == 0 and r["dataset"] == t.dataset
        assert 0 <= r["value"] <= 100
        if t.kind in ("whitebox", "mean_std"):
            assert r["source"] == "whitebox"
            assert (r["attack"] == "clean") == (r["eps"] == 0)
    assert len(ResultTable(t.rows)) == len(t.rows)


def test_holes_are_the_papers_dashes():
    assert len(get_table("n18-table10").holes) == 8
    assert {(h[0], h[1]) for h in get_table("n18-table10").holes} == {
        ("K2C", "K2C"), ("K2C", "P2C"), ("P2C", "K2C"), ("P2C", "P2C"),
        ("K4C", "K4C"), ("K4C", "P4C"), ("P4C", "K4C"), ("P4C", "P4C")}
    for tid in PUBLISHED:
        if tid not in ("n18-table10", "k17-table3", "k17-table5"):
            assert not get_table(tid).holes, tid


def test_layout_matches_the_papers():
    t2 = get_table("n18-table2")
    assert t2.row_order[1] == "step_ll, Kurakin's"
    assert t2.columns[:2] == (("clean", 0.0), ("step_ll", 2.0))
    assert [a for a, _ in t2.columns[1::4]] == ["step_ll", "step_fgsm", "iter_ll", "iter_fgsm"]
    assert get_table("n18-table4").sources == ("B2", "K2", "P2")
    assert get_table("k17-table4").metrics == ("transfer_top1", "transfer_top5")
    assert get_table("k17-table6").metrics == ("error_top1", "error_top5")
    assert get_table("n18-table3").kind == "mean_std"
    assert "same initialization" in get_table("n18-table4").notes


def test_get_table_unknown_lists_ids():
    with pytest.raises(CascadeAdvError, match="n18-table1.*k17-table7"):
        get_table("n18-table99")


# --- recipes -------------------------------------------------------------------------------------


def test_paper_entries_of_a_config():
    """A config's ``paper`` rows ("TABLE: LABEL"), as the reports read them from the store:
    every white-box table it names, and the label the black-box tables give it."""
    entries = ["k17-table1: Baseline (standard training)", "n18-table4: B1",
               "k17-table5 : No adversarial training", "n18-table8: B1"]
    assert split_paper_entry("n18-table2: step_ll, Pivot") == ("n18-table2", "step_ll, Pivot")
    assert split_paper_entry("no colon") is None
    assert paper_row(entries, "k17-table5") == "No adversarial training"
    assert paper_row(entries, "n18-table1") is None
    assert whitebox_rows(entries) == [("k17-table1", "Baseline (standard training)"),
                                      ("k17-table5", "No adversarial training")]
    assert blackbox_label(entries) == "B1"
    assert blackbox_label(["n18-table2: Baseline"]) is None
    # a mean +- std table is not a white-box row of one model
    assert whitebox_rows(["n18-table3: Pivot", "no colon", "x-table9: y"]) == []


def test_same_init_by_number():
    assert same_init_by_number("K2C", "P2")
    assert not same_init_by_number("K1C", "P2C")
    assert not same_init_by_number("A", "A")


# --- rendering -----------------------------------------------------------------------------------


def _wb(model, attack, eps, value, metric="top1", dataset="mnist", source="whitebox"):
    return {"model": model, "dataset": dataset, "split": "test", "attack": attack,
            "eps": eps, "source": source, "metric": metric, "value": value, "n": 100}


def _ours() -> ResultTable:
    rows = []
    for m, base in (("n18_mnist_pivot-seed0", 99.0), ("mine", 50.0),
                    ("n18_mnist_kurakin-seed0", 98.0)):
        rows.append(_wb(m, "clean", 0, base))
        for i, (a, e) in enumerate([("step_ll", 16), ("step_ll", 32), ("iter_fgsm", 16),
                                    ("iter_fgsm", 32), ("step_ll", 8)]):
            rows.append(_wb(m, a, e, base - i))
    rows.append(_wb("mine", "step_ll", 16, 1.0, source="other"))  # black-box: left out
    return ResultTable(rows)


def test_layout_columns():
    assert layout_columns(_ours()) == [("clean", 0.0), ("step_ll", 8.0), ("step_ll", 16.0),
                                       ("step_ll", 32.0), ("iter_fgsm", 16.0),
                                       ("iter_fgsm", 32.0)]
    assert layout_columns([_wb("m", "a", 4, 1), _wb("m", "b", 2, 1), _wb("m", "a", 2, 1)]) == [
        ("a", 2.0), ("a", 4.0), ("b", 2.0)]


def test_render_whitebox_html_structure():
    out = render_whitebox(_ours(), published=get_table("n18-table1"), fmt="html",
                          row_map={"n18_mnist_pivot-seed0": "Pivot",
                                   "n18_mnist_kurakin-seed0": "Kurakin's"})
    assert out.startswith('<table class="paper">')
    assert out.count("<tr") == 2 + 3 + 2  # header rows, our models, published rows
    header = out.split("</thead>")[0]
    assert re.findall(r'<th colspan="(\d+)">([^<]*)</th>', header) == [
        ("1", "clean"), ("3", "step_ll"), ("2", "iter_fgsm")]
    assert "<tr><th>ε</th><th>0</th><th>8</th><th>16</th><th>32</th><th>16</th><th>32</th>" \
        in header
    body = [line for line in out.splitlines() if line.startswith("<tr") and "<td>" in line]
    labels = [re.search(r"<th>([^<]*)</th>", line).group(1) for line in body]
    assert labels == ["n18_mnist_pivot-seed0", "published: Pivot", "mine",
                      "n18_mnist_kurakin-seed0", "published: Kurakin&#x27;s"]
    assert 'class="published"' in body[1] and 'class="published"' not in body[0]
    pub = re.findall(r"<td>([^<]*)</td>", body[1])
    # clean, step_ll 8 (not in the paper), 16, 32, iter_fgsm 16, 32
    assert pub == ["99.6", "-", "99.4", "98.8", "98.8", "96.4"]
    assert re.findall(r"<td>([^<]*)</td>", body[0])[:2] == ["99.0", "95.0"]
    assert "N18 table 1" in out and "<caption>" in out


def test_render_whitebox_markdown_and_row_map():
    out = render_whitebox(_ours(), published=get_table("n18-table1"),
                          row_map={"mine": "Baseline"})
    lines = out.strip().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header == ("| model | clean | step_ll ε=8 | step_ll ε=16 | step_ll ε=32 | "
                      "iter_fgsm ε=16 | iter_fgsm ε=32 |")
    table = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in table] == ["| n18_mnist_pivot-seed0", "| mine",
                                                      "| published: Baseline",
                                                      "| n18_mnist_kurakin-seed0"]
    assert table[2].endswith("| 99.6 | - | 95.7 | 30.2 | 86.6 | 7.5 |")
    with pytest.raises(CascadeAdvError, match="not a label"):
        render_whitebox(_ours(), published=get_table("n18-table1"), row_map={"mine": "X"})


def test_render_whitebox_escapes_html_and_marks_approximate():
    rows = [_wb("<b>&", "clean", 0, 1.0), _wb("k17_cifar10_step_ll-seed1", "clean", 0, 80.0,
                                              dataset="cifar10"),
            _wb("k17_cifar10_step_ll-seed1", "step_fgsm", 16, 70.0, dataset="cifar10")]
    out = render_whitebox(ResultTable(rows), published=get_table("k17-table5"), fmt="html",
                          title="a < b", row_map={"k17_cifar10_step_ll-seed1": "Step l.l."})
    assert "<b>&" not in out and "&lt;b&gt;&amp;" in out and "a &lt; b" in out
    assert "published: Step l.l. ‡" in out and "imagenet" in out
    assert "re-creation" in out


def _bb(target, source, attack, value):
    return {"model": target, "dataset": "cifar10", "split": "test", "attack": attack,
            "eps": 16, "source": source, "metric": "top1", "value": value, "n": 10}


def test_render_blackbox_marks_same_init_and_groups_attacks():
    rows = [_bb(t, s, a, v) for a in ("step_fgsm", "iter_fgsm")
            for t, s, v in [("n18_cifar10_step_ll_pivot", "n18_cifar10_B2", 50.0),
                            ("n18_cifar10_step_ll_pivot", "n18_cifar10_step_ll_kurakin", 20.0)]]
    same = {("n18_cifar10_step_ll_pivot", "n18_cifar10_step_ll_kurakin")}
    out = render_blackbox(ResultTable(rows), attack=["step_fgsm", "iter_fgsm"], eps=16,
                          same_init=lambda t, s: (t, s) in same,
                          published=get_table("n18-table4"), fmt="html",
                          row_map={"n18_cifar10_step_ll_pivot": "P1", "n18_cifar10_B2": "B2"})
    header = out.split("</thead>")[0]
    assert re.findall(r'<th colspan="(\d+)">([^<]*)</th>', header) == [
        ("2", "step_fgsm ε=16"), ("2", "iter_fgsm ε=16")]
    assert out.count("<tr") == 2 + 1 + 1
    body = [line for line in out.splitlines() if "<td>" in line]
    assert re.findall(r"<td>([^<]*)</td>", body[0]) == ["50.0", f"20.0{DAGGER}"] * 2
    # published P1 row: sources B2 (52.0 iter_FGSM) and K1, which is not a table-4 source
    assert "published: P1" in body[1]
    assert re.findall(r"<td>([^<]*)</td>", body[1]) == ["57.2", "-", "52.0", "-"]
    assert SAME_INIT_NOTE in out.replace("&#x27;", "'")

    md = render_blackbox(ResultTable(rows), attack="iter_fgsm", eps=16,
                         same_init=lambda t, s: (t, s) in same)
    assert "| target | iter_fgsm ε=16 from n18_cifar10_B2 |" in md
    assert f"20.0{DAGGER}" in md and SAME_INIT_NOTE in md
    assert "step_fgsm" not in md


def test_render_mean_std():
    rows = []
    for seed, (clean, s16) in enumerate([(90.0, 87.0), (91.0, 88.0), (92.0, 89.0)]):
        m = f"n18_cifar10_step_ll_pivot-seed{seed}"
        rows += [_wb(m, "clean", 0, clean, dataset="cifar10"),
                 _wb(m, "step_ll", 16, s16, dataset="cifar10")]
    cells = mean_std_cells(ResultTable(rows), lambda m: m.split("-seed")[0])
    assert cells[("n18_cifar10_step_ll_pivot", "step_ll", 16.0)] == (88.0, 1.0, 3)
    cells = {("Pivot", a, e): v for (_, a, e), v in cells.items()}
    out = render_mean_std(cells, published=get_table("n18-table3"))
    assert "| Pivot (n = 3) | 91.0 ± 1.00 | 88.0 ± 1.00 |" in out
    assert "| published: Pivot | 90.9 ± 0.25 | 87.8 ± 0.82 |" in out
    html_out = render_mean_std(cells, published=get_table("n18-table3"), fmt="html")
    assert html_out.count("<tr") == 2 + 2 and 'class="published"' in html_out


@pytest.mark.parametrize("tid", N18_IDS + K17_IDS)
def test_render_paper_table(tid):
    t = get_table(tid)
    for fmt in ("markdown", "html"):
        out = render_paper_table(t, fmt=fmt)
        n_rows = len(t.row_order)
        if fmt == "html":
            assert out.count("<tr") == 2 + n_rows
        else:
            assert sum(1 for line in out.splitlines() if line.startswith("| ")) == 2 + n_rows
    if tid == "n18-table8":
        assert DAGGER in render_paper_table(t)
