import statistics

import pytest

from workbench.core.measure.stats import percentile, summarize


def test_summary_matches_reference_implementations():
    data = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    s = summarize(data)
    assert s["p50"] == pytest.approx(statistics.median(data))
    assert s["mean"] == pytest.approx(statistics.mean(data))
    assert s["std"] == pytest.approx(statistics.stdev(data))
    assert (s["min"], s["max"], s["count"]) == (1.0, 10.0, 6)
    assert s["samples"] == data  # raw samples kept, in measurement order
    qs = statistics.quantiles(data, n=10, method="inclusive")
    assert s["p90"] == pytest.approx(qs[8])


def test_percentile_edges():
    assert percentile([1.0], 99) == 1.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert summarize([]) is None
