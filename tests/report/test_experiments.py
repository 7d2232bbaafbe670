"""Notebook runs: a pruning record rebuilds exactly its model; records are reused, not recomputed;
tables and figures are written with their captions."""


import pandas as pd
import pytest

from structprune import perplexity, report
from structprune.experiments import pruning_run, rebuild
from structprune.profiles import profile_settings


@pytest.fixture
def smoke(monkeypatch, _embedded):
    import structprune.experiments as experiments

    monkeypatch.setattr(experiments, "_dense", lambda spec, device, dtype: _embedded)  # the embedded model, loaded once per test run
    return profile_settings("smoke")


def test_pruning_record_rebuilds_the_same_model_and_is_reused(smoke):
    record = pruning_run(smoke, "flap", 0.2)
    config = record["config"]
    assert config["calibration"] == {"dataset": "wikitext2", "nsamples": 8, "seqlen": 128, "seed": 0}
    assert config["evaluation"]["max_windows"] == 8 and config["label"] == "FLAP"
    assert "device" not in config and "dtype" not in config  # CPU float32, whatever machine runs it
    model, tokenizer = rebuild(record)
    assert sum(p.numel() for p in model.parameters()) == record["metrics"]["params_after"]
    again = perplexity(model, tokenizer, "wikitext2", "test", 128, 8)
    assert again["perplexity"] == pytest.approx(record["metrics"]["perplexity"]["perplexity"], rel=1e-6)
    assert pruning_run(smoke, "flap", 0.2)["created"] == record["created"]  # read back, not recomputed
    seeded = pruning_run(smoke, "random", 0.2)
    assert seeded["config"]["options"]["seed"] == smoke["seed"]  # the seed used is the seed recorded


def test_write_table_and_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame({"method": ["FLAP", "Wanda-sp"], "ratio": [0.2, 0.2], "perplexity": [84.48, 1593.14]})
    paths = report.write_table(frame, "demo", "Demo caption: protocol here.")
    assert paths["md"].read_text().startswith("Demo caption: protocol here.\n\n| method | ratio | perplexity |")
    assert "1,593.14" in paths["md"].read_text() and "\\caption{Demo caption" in paths["tex"].read_text()
    assert pd.read_csv(paths["csv"]).equals(frame)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 2])
    saved = report.save_figure(fig, "demo")
    assert saved["png"].read_bytes()[:4] == b"\x89PNG" and saved["pdf"].read_bytes()[:4] == b"%PDF"
    assert not [p for p in saved["png"].parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_paper_tables_name_their_source():
    for name in ("flap_llama7b_wikitext2", "flap_llama7b_zero_shot"):
        rows = report.paper_rows(name)
        assert rows["source"].str.len().min() > 10
    assert report.paper_rows("flap_llama7b_wikitext2").set_index(["method", "ratio"]).loc[("Dense", 0.0), "perplexity"] == 12.62
    with pytest.raises(FileNotFoundError, match="flap_llama7b_wikitext2"):
        report.paper_rows("no_such_table")


def test_profiles_pin_device_and_dtype_into_the_record(monkeypatch, _embedded):
    """A GPU in reach must not change a default-profile record (float16 on CUDA is load_model's default);
    the paper profile's GPU float16 runs are different configs."""
    import structprune.experiments as experiments

    loads = []
    monkeypatch.setattr(experiments, "_dense", lambda spec, device, dtype: loads.append((device, dtype)) or _embedded)
    paper = profile_settings("smoke") | {"device": "cuda", "dtype": "float16", "profile": "paper-like"}
    default_record = pruning_run(profile_settings("smoke"), "dense", 0.0)
    paper_record = pruning_run(paper, "dense", 0.0)
    assert loads == [("cpu", "float32"), ("cuda", "float16")]
    assert paper_record["config"]["device"] == "cuda" and paper_record["config"]["dtype"] == "float16"
    assert paper_record["config_hash"] != default_record["config_hash"]
    assert experiments.precision_of(profile_settings("paper")) == {"device": "cuda", "dtype": "float16"}


def test_leaderboard_joins_the_records_of_one_pruning_run(tmp_path):
    from structprune.records import write_record

    root = tmp_path / "runs"
    base = {"profile": "default", "model": "embedded", "ratio": 0.2}
    dense = {**base, "method": "dense", "ratio": 0.0, "evaluation": {"dataset": "wikitext2", "split": "test",
                                                                      "max_windows": 256}}
    pruned = {**base, "method": "flap", "label": "FLAP", "options": {"metric": "WIFV"},
              "evaluation": {"dataset": "wikitext2", "split": "test", "max_windows": 256}}
    for config, ppl, params in ((dense, 56.0, 100), (pruned, 84.0, 80)):
        write_record("sweep", config, {"perplexity": {"perplexity": ppl}, "params_after": params},
                     path=root / "sweep" / f"{config['method']}.json")
        write_record("sweep", {**config, "evaluation": {**config["evaluation"], "max_windows": 64}},
                     {"perplexity": {"perplexity": ppl + 1}, "params_after": params},
                     path=root / "sweep" / f"{config['method']}64.json")
    speed = {"threads": 2, "repeats": 3, "prefill_shapes": [[8, 512]], "decode_batches": [1], "new_tokens": 8}
    for config, tps, macs in ((dense, 100.0, 10.0), (pruned, 120.0, 8.0)):
        result = {"prefill": [{"batch": 8, "tokens": 512, "tokens_per_second": tps, "macs": macs}],
                  "decode": [{"tokens_per_second": tps / 10}]}
        write_record("speed", {"pruning": config, **speed}, {"speed": result},
                     path=root / "speed" / f"{config['method']}.json")
    write_record("zero_shot", {"pruning": pruned, "limit": 50}, {"zero_shot": {"average": 0.45}},
                 path=root / "zero_shot" / "flap.json")
    board = report.leaderboard("default", "embedded", root).set_index("method")
    assert board.loc["FLAP", "PPL (256 windows)"] == 84.0 and board.loc["FLAP", "PPL (64 windows)"] == 85.0
    assert board.loc["FLAP", "zero-shot avg (50 docs)"] == pytest.approx(45.0)
    assert board.loc["FLAP", "prefill x (8x512)"] == pytest.approx(1.2)
    assert board.loc["FLAP", "ideal x"] == pytest.approx(10.0 / 8.0)
    assert board.loc["Dense", "parameters"] == 100 and pd.isna(board.loc["Dense", "zero-shot avg (50 docs)"])


def test_zero_shot_record_names_the_model_not_the_extra_perplexity_sets(tmp_path, monkeypatch):
    """A pruning record that also measured C4 and the same run on WikiText-2 alone are one model: their
    zero-shot run is computed once; a record without extra sets keeps its own hash as `of`."""
    import json

    import torch

    import structprune.experiments as experiments
    from structprune.records import write_record

    monkeypatch.setenv("STRUCTPRUNE_RESULTS", str(tmp_path))
    computed = []
    monkeypatch.setattr(experiments, "rebuild", lambda record: (torch.nn.Linear(2, 3), None))
    monkeypatch.setattr(experiments, "zero_shot", lambda model, tokenizer, tasks, limit, batch_size:
                        computed.append(limit) or {"average": 0.5, "seconds": 0.0})
    plain = {"profile": "default", "model": "embedded", "method": "flap", "ratio": 0.2,
             "evaluation": {"dataset": "wikitext2", "split": "test", "seqlen": 128, "max_windows": 64}}
    with_c4 = {**plain, "evaluation": {**plain["evaluation"], "also": ["c4"]}}
    plain_record, c4_record = (json.loads(write_record("sweep", c, {}).read_text()) for c in (plain, with_c4))
    assert plain_record["config_hash"] != c4_record["config_hash"]
    assert experiments.model_identity(plain_record) == (plain_record["config_hash"], plain)
    assert experiments.model_identity(c4_record) == (plain_record["config_hash"], plain)
    assert c4_record["config"]["evaluation"]["also"] == ["c4"]  # the record itself is left as it is

    first = experiments.zero_shot_run(c4_record, 50)
    second = experiments.zero_shot_run(plain_record, 50)
    assert computed == [50] and first["config_hash"] == second["config_hash"]
    assert first["config"]["of"] == plain_record["config_hash"] and first["metrics"]["params_after"] == 9
    experiments.zero_shot_run(plain_record, 25)  # another protocol is another run
    assert computed == [50, 25]


def test_record_log_and_compute_cost_per_notebook(tmp_path, monkeypatch):
    """run_once logs every record it reads or writes; compute_cost sums each notebook's distinct records."""
    import json
    import time

    from structprune.records import RECORD_LOG_ENV, run_once

    monkeypatch.setenv("STRUCTPRUNE_RESULTS", str(tmp_path))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()

    def slow(seconds):
        def compute():
            time.sleep(seconds)
            return {"value": seconds}, {"perplexity_seconds": 1000.0}  # compute's own timing: wall time wins
        return compute

    monkeypatch.setenv(RECORD_LOG_ENV, str(notebooks / "01_a.ipynb.records.jsonl"))
    first = run_once("sweep", {"n": 1}, slow(0.2))
    run_once("sweep", {"n": 1}, slow(5.0))  # reused: no second computation, logged again
    run_once("sweep", {"n": 2}, slow(0.1))
    monkeypatch.setenv(RECORD_LOG_ENV, str(notebooks / "02_b.ipynb.records.jsonl"))
    run_once("sweep", {"n": 1}, slow(5.0))
    log = [json.loads(line) for line in (notebooks / "01_a.ipynb.records.jsonl").read_text().splitlines()]
    assert [entry["computed"] for entry in log] == [True, False, True]
    assert log[0]["run_id"] == log[1]["run_id"] == first["run_id"]
    assert 0.2 <= first["timings"]["wall_seconds"] < 5.0

    cost = report.compute_cost().set_index("notebook")
    records = {json.loads(p.read_text())["run_id"]: json.loads(p.read_text()) for p in (tmp_path / "runs" / "sweep").glob("*.json")}
    wall = {r["config"]["n"]: r["timings"]["wall_seconds"] for r in records.values()}
    assert cost.loc["01_a", "records"] == 2 and cost.loc["02_b", "records"] == 1
    assert cost.loc["01_a", "minutes"] == pytest.approx((wall[1] + wall[2]) / 60)
    assert cost.loc["02_b", "minutes"] == pytest.approx(wall[1] / 60)
    assert cost.loc["01_a", "untimed records"] == 0
