"""Loaders for the local copies of the seven zero-shot task sets (the data folder, docs/data.md).

Each returns a `datasets.DatasetDict` whose rows carry the Hugging Face field names the official lm-eval
tasks read, so the task YAMLs beside this file can use the official prompts, choices and targets
unchanged. lm-eval calls them through `custom_dataset:` with the task's metadata as keyword arguments.
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import datasets


def _folder(data_path: str | None = None) -> Path:
    from structprune.data import DATA_ENV, default_data_dir

    folder = Path(data_path) if data_path else default_data_dir()
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"the zero-shot task files are not found: run `make data`, or set {DATA_ENV} to the "
                                "data folder (docs/data.md)")
    return folder


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _require(rows: list[dict], fields: tuple[str, ...], source: Path) -> None:
    for number, row in enumerate(rows, 1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{source}, row {number}: missing field(s) {', '.join(missing)}; "
                             "the file is not the documented copy (docs/data.md: `make data` fetches a verified one)")


def _split(rows: list[dict], split: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def boolq_rows(data_path: str | None = None) -> list[dict]:
    path = _folder(data_path) / "boolq" / "val.jsonl.gz"
    rows = _jsonl(path)
    _require(rows, ("question", "passage", "idx", "label"), path)
    # The file stores label as "true"/"false"; HF's ClassLabel maps False -> 0, True -> 1.
    labels = {True: 1, "true": 1, False: 0, "false": 0}
    for number, row in enumerate(rows, 1):
        if row["label"] not in labels:
            raise ValueError(f"{path}, row {number}: label {row['label']!r} is neither true nor false")
    return [{"question": r["question"], "passage": r["passage"], "idx": r["idx"], "label": labels[r["label"]]}
            for r in rows]


def piqa_rows(data_path: str | None = None) -> list[dict]:
    folder = _folder(data_path) / "piqa"
    rows = _jsonl(folder / "valid.jsonl")
    _require(rows, ("goal", "sol1", "sol2"), folder / "valid.jsonl")
    labels = (folder / "valid-labels.lst").read_text().split()
    if len(labels) != len(rows):
        raise ValueError(f"{folder}: {len(rows)} questions but {len(labels)} labels")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
            for r, label in zip(rows, labels, strict=True)]


def winogrande_rows(data_path: str | None = None) -> list[dict]:
    path = _folder(data_path) / "winogrande" / "dev.jsonl"
    rows = _jsonl(path)
    _require(rows, ("sentence", "option1", "option2", "answer"), path)
    return [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in rows]


def _ai2_rows(path: Path, question_field: str) -> list[dict]:
    rows = _jsonl(path)
    _require(rows, ("id", "question", "answerKey"), path)
    return [{"id": r["id"], question_field: r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in rows]


def arc_easy_rows(data_path: str | None = None) -> list[dict]:
    return _ai2_rows(_folder(data_path) / "arc" / "ARC-Easy-Test.jsonl", "question")


def arc_challenge_rows(data_path: str | None = None) -> list[dict]:
    return _ai2_rows(_folder(data_path) / "arc" / "ARC-Challenge-Test.jsonl", "question")


def openbookqa_rows(data_path: str | None = None) -> list[dict]:
    return _ai2_rows(_folder(data_path) / "openbookqa" / "test.jsonl", "question_stem")


def hellaswag_rows(data_path: str | None = None) -> list[dict]:
    """The derived llama.cpp text (6 lines per item: "activity_label: ctx", label, 4 endings).

    The original ctx_a/ctx_b split is gone, so ctx_b cannot be capitalised as lm-eval does: an
    approximation of the official task, labelled as such wherever it is reported."""
    path = _folder(data_path) / "hellaswag" / "hellaswag_val_full.txt.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    return [{"context": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]


def _loader(rows, split: str):
    """The `custom_dataset` function lm-eval calls (with the task metadata as keyword arguments)."""
    def load(**kwargs) -> datasets.DatasetDict:
        return _split(rows(kwargs.get("data_path")), split)
    return load


boolq = _loader(boolq_rows, "validation")
piqa = _loader(piqa_rows, "validation")
winogrande = _loader(winogrande_rows, "validation")
arc_easy = _loader(arc_easy_rows, "test")
arc_challenge = _loader(arc_challenge_rows, "test")
openbookqa = _loader(openbookqa_rows, "test")
hellaswag = _loader(hellaswag_rows, "validation")
