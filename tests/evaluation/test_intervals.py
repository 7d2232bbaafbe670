"""Error bars: the perplexity interval (delta method over windows), paired comparisons on the same windows,
and the standard error of the zero-shot average, each against a direct computation."""

import math

import numpy as np
import pytest

from structprune.data import random_calibration
from structprune.evaluate import (
    average_stderr,
    paired_accuracy,
    paired_perplexity,
    perplexity_interval,
    perplexity_of_ids,
)


def test_window_losses_reproduce_the_perplexity_and_its_interval(tiny):
    ids = random_calibration(256, 1, 16 * 12, seed=3).flatten()
    result = perplexity_of_ids(tiny, ids, seqlen=16, batch_size=5)  # batches that do not divide the windows
    windows = np.array(result["window_nll"])
    assert len(windows) == result["windows"] == 12
    assert math.isclose(math.exp(windows.mean()), result["perplexity"], rel_tol=1e-6)
    se = windows.std(ddof=1) / math.sqrt(len(windows))
    assert result["ci95"] == pytest.approx([math.exp(windows.mean() - 1.959963984540054 * se),
                                            math.exp(windows.mean() + 1.959963984540054 * se)], rel=1e-12)
    assert result["ci95"][0] < result["perplexity"] < result["ci95"][1]


def test_paired_comparison_uses_the_per_window_differences():
    a = {"window_nll": [3.0, 3.2, 2.9, 3.1, 3.05], "seqlen": 16}
    b = {"window_nll": [3.1, 3.35, 3.0, 3.2, 3.1], "seqlen": 16}
    diff = np.array(a["window_nll"]) - np.array(b["window_nll"])
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    result = paired_perplexity(a, b)
    assert result["ratio"] == pytest.approx(math.exp(diff.mean()))
    assert result["ci95"] == pytest.approx([math.exp(diff.mean() - 1.959963984540054 * se),
                                            math.exp(diff.mean() + 1.959963984540054 * se)])
    assert result["verdict"] == "a lower"  # a is lower on every window
    noisy = {"window_nll": [3.0, 3.4, 2.8, 3.3, 3.0], "seqlen": 16}
    assert paired_perplexity(noisy, b)["verdict"] == "not distinguishable"
    with pytest.raises(ValueError, match="not the same windows"):
        paired_perplexity(a, {"window_nll": [3.0], "seqlen": 16})


def test_interval_of_one_window_is_the_point():
    assert perplexity_interval([2.0]) == (math.exp(2.0), math.exp(2.0))


def test_average_stderr_is_the_root_sum_of_squares_over_the_task_count():
    tasks = {"boolq": {"acc_stderr": 0.03, "acc_norm_stderr": 0.5}, "piqa": {"acc_stderr": 0.9, "acc_norm_stderr": 0.04}}
    assert average_stderr(tasks) == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)  # each task's paper metric
    assert average_stderr({"boolq": {"acc_stderr": None}}) is None


def test_zero_shot_rows_carry_the_average_standard_error_and_compare_beyond_noise_paired():
    from structprune import report
    from structprune.evaluate import PAPER_METRIC, PAPER_TASKS

    def record(label, score, stderr, correct=(1, 0)):
        tasks = {t: {"score": score, f"{PAPER_METRIC[t]}_stderr": stderr, "correct": list(correct) * 10}
                 for t in PAPER_TASKS}
        return {"config": {"pruning": {"method": "x", "label": label, "ratio": 0.2}},
                "metrics": {"zero_shot": {"tasks": tasks, "average": score}}}

    rows = report.zero_shot_rows([record("A", 0.50, 0.07), record("B", 0.45, 0.07), record("C", 0.30, 0.02)])
    assert rows["± (s.e.)"].tolist() == pytest.approx([100 * math.sqrt(7 * 0.07**2) / 7] * 2 + [100 * 0.02 / math.sqrt(7)])
    # paired on the same documents: one document apart in every pair of 20 is noise, always right against
    # always wrong is not
    same, shifted = record("A", 0.5, 0.1, (1, 0)), record("B", 0.5, 0.1, (0, 1))
    best, worst = record("C", 1.0, 0.0, (1, 1)), record("D", 0.0, 0.0, (0, 0))
    assert report.compare_zero_shot(same, shifted) == "not distinguishable"
    assert report.compare_zero_shot(best, worst) == "higher" and report.compare_zero_shot(worst, best) == "lower"


def test_paired_accuracy_uses_the_per_document_differences():
    a = {"tasks": {"boolq": {"correct": [1, 1, 0, 1, 1, 0, 1, 1]}, "piqa": {"correct": [1, 0, 1, 1]}}}
    b = {"tasks": {"boolq": {"correct": [0, 1, 0, 0, 1, 0, 0, 1]}, "piqa": {"correct": [1, 1, 1, 0]}}}
    result = paired_accuracy(a, b)
    boolq = np.array([1, 0, 0, 1, 0, 0, 1, 0], dtype=float)  # a - b per document
    piqa = np.array([0, -1, 0, 1], dtype=float)
    for name, diff in (("boolq", boolq), ("piqa", piqa)):
        se = diff.std(ddof=1) / math.sqrt(len(diff))
        assert result["tasks"][name]["difference"] == pytest.approx(diff.mean())
        assert result["tasks"][name]["se"] == pytest.approx(se)
        assert result["tasks"][name]["ci95"] == pytest.approx([diff.mean() - 1.959963984540054 * se,
                                                               diff.mean() + 1.959963984540054 * se])
    average_se = math.sqrt(boolq.std(ddof=1) ** 2 / 8 + piqa.std(ddof=1) ** 2 / 4) / 2
    assert result["average"]["difference"] == pytest.approx((boolq.mean() + piqa.mean()) / 2)
    assert result["average"]["se"] == pytest.approx(average_se)
    assert result["tasks"]["piqa"]["verdict"] == "not distinguishable"
    # the same documents always agree: no spread, and a clear verdict for a consistent gap
    sure = paired_accuracy({"tasks": {"t": {"correct": [1] * 20}}}, {"tasks": {"t": {"correct": [0] * 20}}})
    assert sure["average"]["verdict"] == "a higher" and sure["average"]["se"] == 0.0
    with pytest.raises(ValueError, match="per-document"):
        paired_accuracy({"tasks": {"t": {"score": 0.5}}}, b)
    with pytest.raises(ValueError, match="not the same documents"):
        paired_accuracy({"tasks": {"boolq": {"correct": [1, 0]}}}, b)
