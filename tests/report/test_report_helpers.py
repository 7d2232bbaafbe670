"""Report helpers the notebooks call: Pareto front, speed rows and captions read from the records."""

import pandas as pd
import pytest

from structprune import report


def _speed(device="cpu", dtype="torch.float32", tps=(100.0, 400.0), macs=(10.0, 40.0), decode=(5.0,)):
    return {"device": device, "dtype": dtype, "parameters": 1000, "macs_per_token": {"total": 2e6},
            "prefill": [{"batch": b, "tokens": 512, "tokens_per_second": t, "macs": m}
                        for b, t, m in zip((1, 8), tps, macs, strict=True)],
            "decode": [{"batch": b, "tokens_per_second": t} for b, t in zip((1, 8), decode, strict=False)],
            "memory": {"weights_mib": 3.0}}


def test_pareto_front_keeps_exactly_the_unbeaten_points():
    # (1.4, 45) is slower and less accurate than (1.5, 48); (1.0, 47) than (1.2, 49): both are dominated
    points = pd.DataFrame({"speed": [1.0, 1.5, 2.0, 1.2, 1.8, 1.4, 1.0],
                           "acc": [50.0, 48.0, 40.0, 49.0, 47.0, 45.0, 47.0]})
    front = report.pareto_front(points, "speed", "acc")
    assert list(zip(front.speed, front.acc, strict=True)) == [(2.0, 40.0), (1.8, 47.0), (1.5, 48.0), (1.2, 49.0),
                                                             (1.0, 50.0)]


def test_captions_name_the_device_and_dtype_of_the_records():
    assert report.precision_caption(_speed()) == "CPU float32"
    assert report.precision_caption(_speed("cuda:0", "torch.bfloat16")) == "CUDA bfloat16"


def test_speed_rows_compare_against_dense_at_the_largest_shape_and_every_decode_batch():
    dense, pruned = _speed(), _speed(tps=(150.0, 500.0), macs=(8.0, 32.0), decode=(6.0,))
    record = {"config": {"method": "flap", "label": "FLAP", "ratio": 0.2, "options": {"round_to": 8}},
              "metrics": {"perplexity": {"perplexity": 70.0}}}
    row = report.speed_row(record, pruned, dense)
    assert "options" not in row
    assert row["prefill x (8x512)"] == 500.0 / 400.0 and row["ideal x (8x512)"] == 40.0 / 32.0
    assert row["decode x (batch 1)"] == 6.0 / 5.0 and "decode x (batch 8)" not in row
    assert report.prefill_speedups(dense, pruned) == {"prefill x (1x512)": 1.5, "prefill x (8x512)": 1.25,
                                                      "ideal x": 1.25}


def test_report_gathers_every_table_by_notebook_and_the_readme_block_is_the_only_change(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTPRUNE_RESULTS", str(tmp_path))
    report.write_table(pd.DataFrame({"a": [1.5]}), "01_default_perplexity", "caption one")
    report.write_table(pd.DataFrame({"b": [2.5]}), "06_default_matched", "caption six")
    report.write_table(pd.DataFrame({"c": [3.5]}), "06_smoke_matched", "another profile")
    text = report.write_report("default").read_text()
    assert text.index("## 01 ·") < text.index("caption one") < text.index("## 06 ·") < text.index("caption six")
    assert "another profile" not in text and "## 02 ·" not in text
    start, end = report.README_BLOCK
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\nold\n{end}\noutro\n")
    report.update_readme_block(pd.DataFrame({"x": [1.0]}), "new caption", readme)
    assert readme.read_text() == f"intro\n{start}\nnew caption\n\n| x |\n|---|\n| 1.00 |\n{end}\noutro\n"
    readme.write_text("no block")
    with pytest.raises(ValueError, match="has no results block"):
        report.update_readme_block(pd.DataFrame({"x": [1.0]}), "c", readme)


def _long_record(method, window_nll, target=None, seqlen=128):
    import math

    mean = sum(window_nll) / len(window_nll)
    pruning = {"method": method, "label": method.upper(), **({"target_params": target} if target else {})}
    return {"config": {"pruning": pruning, "seqlen": seqlen, "dtype": "bfloat16", "max_windows": None},
            "metrics": {"params_after": 10, "perplexity": {"perplexity": math.exp(mean), "ci95": [0, 0],
                                                           "window_nll": window_nll, "windows": len(window_nll),
                                                           "seqlen": seqlen}}}


def test_long_protocol_rows_pair_every_model_with_the_dense_one_on_the_same_windows():
    import math

    dense = _long_record("dense", [2.0, 3.0, 4.0])
    pruned = _long_record("flap", [2.5, 3.1, 4.6], target=0.2)
    other = _long_record("flap", [2.0, 2.0], target=0.2, seqlen=2048)
    other_dense = _long_record("dense", [1.5, 1.5], seqlen=2048)
    table = report.long_protocol_rows([pruned, dense, other, other_dense])
    assert list(table.method) == ["Dense", "FLAP", "Dense", "FLAP"]  # by window length, dense first
    diffs = [0.5, 0.1, 0.6]
    mean, sd = sum(diffs) / 3, (sum((d - 0.4) ** 2 for d in diffs) / 2) ** 0.5
    low, high = math.exp(mean - 1.959963984540054 * sd / 3 ** 0.5), math.exp(mean + 1.959963984540054 * sd / 3 ** 0.5)
    assert table.loc[1, "paired x dense"] == f"{math.exp(mean):.2f} [{low:.2f}, {high:.2f}]"
    assert table.loc[3, "paired x dense"].startswith(f"{math.exp(0.5):.2f}")


def test_lowest_per_target_picks_the_lowest_perplexity_at_each_target():
    records = [{"config": {"target_params": t}, "metrics": {"perplexity": {"perplexity": p}}, "name": n}
               for t, p, n in ((0.4, 9.0, "a"), (0.2, 5.0, "b"), (0.2, 4.0, "c"), (0.4, 8.0, "d"))]
    assert [r["name"] for r in report.lowest_per_target(records)] == ["c", "d"]
    assert [r["name"] for r in report.lowest_per_target(records, count=2)] == ["c", "b", "d", "a"]
