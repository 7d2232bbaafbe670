"""Leaderboards across notebooks, read from the records: every method and ratio of a profile's model (perplexity,
zero-shot, speed), the matched-size table, and what each notebook's records cost to compute."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..paths import results_dir
from ..profiles import profile_settings
from ..records import record_list
from ..speed import speedup
from .labels import device_name, variant_label, variant_marks
from .perplexity import matched_rows
from .speed import _same_protocol


def matched_leaderboard(profile: str = "default", model: str = "embedded", root: Path | None = None) -> pd.DataFrame:
    """`matched_rows` of every matched-size record (results/runs/matched) of a profile's model, against the
    dense sweep record of the same evaluation protocol."""
    root = Path(root or results_dir() / "runs")

    def records(experiment):
        return record_list(experiment, root)

    matched = [r for r in records("matched") if r["config"].get("profile") == profile
               and r["config"].get("model") == model]
    if not matched:
        return pd.DataFrame()
    evaluation = matched[0]["config"]["evaluation"]
    dense = next((r for r in records("sweep") if r["config"]["method"] == "dense" and r["config"].get("profile") == profile
                  and r["config"].get("model") == model and r["config"]["evaluation"] == evaluation), None)
    if dense is None:
        return pd.DataFrame()
    return matched_rows([r for r in matched if r["config"]["evaluation"] == evaluation], dense)


README_COLUMNS = ["target", "method", "removed (% of model)", "perplexity", "95 % low", "95 % high", "paired vs lowest"]


def readme_results(profile: str = "default", model: str = "embedded",
                   root: Path | None = None) -> tuple[pd.DataFrame, str] | None:
    """What the README's results block shows: the matched-size table (`matched_leaderboard`) and its caption;
    None when the records hold no matched-size run."""
    matched = matched_leaderboard(profile, model, root)
    if matched.empty:
        return None
    dense = matched["perplexity"].iloc[0] / matched["x dense"].iloc[0]
    return matched[README_COLUMNS], (f"WikiText-2 perplexity at matched size ({model}, {profile} profile; dense "
                                     f"{dense:.2f}); full protocol in results/REPORT.md, notebook 06.")


def _pruning_key(config: dict) -> str:
    """A pruning run's identity without its evaluation protocol (the same model evaluated two ways)."""
    import json

    return json.dumps({k: v for k, v in config.items() if k != "evaluation"}, sort_keys=True, default=str)


def leaderboard(profile: str = "default", model: str = "embedded", root: Path | None = None) -> pd.DataFrame:
    """All methods x ratios of a profile's model from the records: parameters, WikiText-2 perplexity per
    evaluation subset, 7-task zero-shot average, measured prefill speedup and decode speed.

    Rows join the sweep, zero-shot and speed records of the same pruning run (same config but for the
    evaluation); a cell no record measured is NaN. Speeds are against the dense speed record of the same
    protocol (threads, repeats, shapes)."""
    root = Path(root or results_dir() / "runs")

    def records(experiment):
        return record_list(experiment, root)

    rows: dict[str, dict] = {}
    for record in records("sweep"):
        config = record["config"]
        if config.get("profile") != profile or config.get("model") != model:
            continue
        evaluation = config["evaluation"]
        if evaluation["dataset"] != "wikitext2" or evaluation["split"] != "test":
            continue
        row = rows.setdefault(_pruning_key(config), {
            "method": variant_label(config), "_variant": bool(variant_marks(config)), "ratio": config["ratio"],
            "parameters": record["metrics"]["params_after"]})
        windows = evaluation["max_windows"]
        row[f"PPL ({'all' if windows is None else windows} windows)"] = record["metrics"]["perplexity"]["perplexity"]
    settings = profile_settings(profile)  # one zero-shot protocol for every row: the profile's
    for record in records("zero_shot"):
        key, config = _pruning_key(record["config"]["pruning"]), record["config"]
        if (key in rows and config["limit"] == settings["zero_shot_limit"]
                and config.get("dtype", "float32") == settings["zero_shot_dtype"]):
            limit = config["limit"]
            rows[key][f"zero-shot avg ({'all' if limit is None else limit} docs)"] = \
                100 * record["metrics"]["zero_shot"]["average"]
    speeds: dict[str, list[dict]] = {}
    for record in records("speed"):
        speeds.setdefault(_pruning_key(record["config"]["pruning"]), []).append(record)
    dense_speeds = [r for r in records("speed") if r["config"]["pruning"]["method"] == "dense"
                    and r["config"]["pruning"].get("profile") == profile]
    devices: set[str] = set()
    for key, row in rows.items():
        # the record with the most prefill shapes (the full protocol), measured against a dense one alike
        candidates = sorted(speeds.get(key, []), key=lambda r: -len(r["config"].get("prefill_shapes") or []))
        for record in candidates:
            dense = next((d for d in dense_speeds if _same_protocol(d, record)), None)
            if dense is None:
                continue
            measured = record["metrics"]["speed"]
            if "device" in measured:
                devices.add(device_name(measured))
            largest = speedup(dense["metrics"]["speed"], measured)[-1]
            row["decode tok/s (batch 1)"] = measured["decode"][0]["tokens_per_second"]
            row[f"prefill x ({largest['batch']}x{largest['tokens']})"] = largest["measured"]
            row["ideal x"] = largest["ideal"]
            break
    frame = pd.DataFrame(list(rows.values()))
    frame = frame.sort_values(["ratio", "method"]).reset_index(drop=True) if not frame.empty else frame
    variant = frame.pop("_variant") if not frame.empty else pd.Series(dtype=bool)
    frame.attrs["speed_devices"] = " / ".join(sorted(devices))  # where the speeds were measured
    frame.attrs["option_variants"] = [bool(v) for v in variant]  # rows whose options differ from the method's
    return frame


def main_rows(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's rows run at their method's own options and calibration (recovery kept): the variants
    that notebooks run as ablations left out."""
    if board.empty:
        return board
    keep = [not variant for variant in board.attrs["option_variants"]]
    main = board[keep].reset_index(drop=True)
    main.attrs = dict(board.attrs, option_variants=[False] * len(main))
    return main


def record_seconds(record: dict) -> float | None:
    """The compute time a record took: run_once's wall time, else (older records) the sum of its timings;
    None when the record kept no timing (speed records before wall_seconds was recorded)."""
    timings = {k: v for k, v in (record.get("timings") or {}).items() if isinstance(v, int | float)}
    if "wall_seconds" in timings:
        return timings["wall_seconds"]
    return sum(timings.values()) if timings else None


def compute_cost(folder: Path | None = None, root: Path | None = None) -> pd.DataFrame:
    """What a from-scratch run of each notebook costs, from the records it used.

    `make reproduce` runs each notebook with $STRUCTPRUNE_RECORD_LOG=<executed notebook>.records.jsonl
    (records.run_once logs every record it reads or writes); this sums the recorded compute time of each
    notebook's distinct records per machine (cpu_count, "not recorded" for the oldest records)."""
    import json

    folder = Path(folder or results_dir() / "notebooks")
    root = Path(root or results_dir() / "runs")
    rows = []
    for log in sorted(folder.glob("*.records.jsonl")):
        notebook = log.name.removesuffix(".records.jsonl").removesuffix(".ipynb")
        used = {(e["experiment"], e["run_id"]) for e in map(json.loads, log.read_text().splitlines()) if e}
        for experiment, run_id in sorted(used):
            path = root / experiment / f"{run_id}.json"
            if not path.is_file():
                continue
            record = json.loads(path.read_text())
            cpus = record.get("cpu_count")
            device = str(record.get("device") or "cpu")
            machine = device if not device.startswith("cpu") else (
                f"{cpus}-core CPU" if cpus else "CPU, cores not recorded")
            rows.append({"notebook": notebook, "machine": machine, "seconds": record_seconds(record)})
    if not rows:
        return pd.DataFrame(columns=["notebook", "machine", "records", "untimed records", "minutes"])
    frame = pd.DataFrame(rows)
    return (frame.groupby(["notebook", "machine"])
            .agg(records=("seconds", "size"), **{"untimed records": ("seconds", lambda s: int(s.isna().sum()))},
                 minutes=("seconds", lambda s: s.sum() / 60))
            .reset_index())
