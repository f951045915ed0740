"""The search-vs-test rank correlations and their bootstrap interval (numpy/pandas; values checked against scipy's
documented examples)."""

import math

import numpy as np
import pytest

from fractal_space.search.results.fidelity import bootstrap_interval, kendall_tau, spearman


def test_rank_correlations_match_scipys_documented_values_ties_included():
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)  # tau-b, ties
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and spearman([1, 2, 3], [10, 20, 30]) == 1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1.0], [2.0]))


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)  # rho about 0.7
    low, high = bootstrap_interval(x, y, spearman)
    assert low < spearman(x, y) < high and 0.55 < low and high < 0.85
    low12, high12 = bootstrap_interval(x[:12], y[:12], spearman)
    assert high12 - low12 > 2 * (high - low)  # 12 models pin the correlation down far less than 200
    wide = bootstrap_interval(x[:12], y[:12], spearman, level=0.99)
    assert wide[0] <= low12 and high12 <= wide[1]
    assert bootstrap_interval(x[:12], y[:12], spearman) == (low12, high12)  # seeded: the report does not flicker
    independent = bootstrap_interval(x, rng.normal(size=200), kendall_tau)
    assert independent[0] < 0 < independent[1]


def test_bootstrap_interval_of_too_few_or_bad_input():
    assert all(math.isnan(v) for v in bootstrap_interval([1, 2], [2, 1], kendall_tau))
    assert bootstrap_interval([1, 2, 3, 4], [1, 2, 3, 4], kendall_tau) == (1.0, 1.0)  # constant resamples left out
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_interval([1, 2, 3], [1, 2], spearman)
    with pytest.raises(ValueError, match="level 1.5"):
        bootstrap_interval([1, 2, 3], [1, 2, 3], spearman, level=1.5)


def test_the_report_quotes_the_sampler_benchmark_only_for_a_study_of_its_scale(tmp_path, monkeypatch):
    import json

    from fractal_space.search.results import report
    from fractal_space.search.space import SearchSpace
    from fractal_space.search.study.settings import SearchSettings
    from fractal_space.search.trial.budget import Budget
    from fractal_space.search.trial.rungs import Rungs

    def settings(trials: int) -> SearchSettings:
        budget = Budget(rung_images=Rungs(300, 3), device="cpu", dataset="cifar10", val_size=300, train_subset=2700)
        return SearchSettings("s", tmp_path, None, "accuracy", trials, SearchSpace.default(32, "cpu"), budget)

    doc = tmp_path / "sampler_evidence.json"
    monkeypatch.setattr(report, "EFFICIENCY", doc)
    assert "has not been written here" in report._sampler_evidence(settings(27))  # noqa: SLF001
    doc.write_text(json.dumps({"scale": report.study_scale(settings(27)), "finding": "Random search wins.",
                               "summary": "27 trials"}))
    quoted = report._sampler_evidence(settings(27))  # noqa: SLF001
    assert quoted.endswith(f"{report.EFFICIENCY_PAGE}: Random search wins.")
    assert report._sampler_evidence(settings(200)).startswith("not measured at this study's scale")  # noqa: SLF001


def test_the_fidelity_line_says_when_the_search_had_no_more_architectures_to_spread():
    import pandas as pd

    from fractal_space.search.results import report

    final = pd.DataFrame({"architecture": list("abcdef"), "trial": range(6),
                          "search_val_acc": [0.5, 0.4, 0.3, 0.2, 0.1, 0.05], "test_acc": [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
                          "role": ["top"] * 3 + ["spread"] * 3})
    short = report._fidelity(final, asked_spread=7, top_images=900)  # noqa: SLF001
    assert "(n = 6, 3 of them spread" in short and "a larger --final-spread adds none" in short
    assert "--final-spread adds architectures across the ranking" in report._fidelity(final, 3, 900)  # noqa: SLF001


def test_the_fidelity_ranks_a_model_stopped_below_the_top_rung_under_every_top_rung_one_whatever_its_score():
    import pandas as pd

    from fractal_space.search.results import report

    # d and e stopped at a lower rung with high scores there; a, b, c and f are top-rung rows written before
    # search_images existed (NaN), g one written after. Ranked by rung, then score, the search's order is the test
    # order.
    final = pd.DataFrame({"architecture": list("abcdef"), "trial": range(6),
                          "search_val_acc": [0.7, 0.6, 0.5, 0.9, 0.8, 0.65], "search_images": [None] * 3 + [300] * 2
                          + [None], "test_acc": [0.9, 0.7, 0.6, 0.3, 0.2, 0.8], "role": ["top"] * 3 + ["spread"] * 3})
    line = report._fidelity(final, asked_spread=3, top_images=900)  # noqa: SLF001
    assert "Spearman rho 1.00" in line and "Kendall tau 1.00" in line
    assert "3 of them spread over the ranking below the top, 2 of which successive halving stopped below" in line
    later = pd.DataFrame({"architecture": ["g"], "trial": [6], "search_val_acc": [0.55], "search_images": [900],
                          "test_acc": [0.65], "role": ["spread"]})
    assert "Kendall tau 1.00" in report._fidelity(pd.concat([final, later]), 3, 900)  # noqa: SLF001
    assert "Kendall tau 1.00" not in report._fidelity(final.drop(columns="search_images"), 3, 900)  # noqa: SLF001
