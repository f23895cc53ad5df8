"""``cascade-adv quickstart`` end to end on the bundled digits."""

from __future__ import annotations

import re

from cascade_adv.evaluation import ResultsStore
from cascade_adv.experiments import quickstart
from cascade_adv.experiments.quickstart import ATTACKS, EPS, LABELS


def test_quickstart_trains_evaluates_and_stores(tmp_path):
    result = quickstart(tmp_path / "runs", tmp_path / "results.db", progress=False)
    table = result.table
    for label in LABELS.values():
        assert table.value(label, "clean") is not None
        for attack in ATTACKS:
            for eps in EPS:
                assert table.value(label, attack, eps, source="whitebox") is not None
        for eps in EPS:  # black-box iter_FGSM from the separately trained source
            assert table.value(label, "iter_fgsm", eps, source="source") is not None
    # the summary quotes the table's own numbers
    hi = EPS[-1]
    for label in ("Baseline", "Kurakin's", "Pivot"):
        assert f"{table.value(label, 'step_ll', hi):.1f}%" in result.summary
    assert len(re.findall(r"\.(?:\s|$)", result.summary)) == 2
    with ResultsStore(tmp_path / "results.db") as store:
        assert len(store.query(metric="top1")) == len(table.filter(metric="top1"))
    markdown = table.to_markdown(sources_as_columns=True)
    assert "iter_fgsm from source 32" in markdown.splitlines()[0]
    assert len(markdown.strip().splitlines()) == 2 + len(LABELS)
    # accuracy vs eps: the four models solid, N18 table 1's three rows dashed
    assert result.figure == tmp_path / "runs" / "accuracy_vs_eps.png"
    from matplotlib.image import imread

    assert imread(result.figure).shape[1] > 1000          # four panels side by side
