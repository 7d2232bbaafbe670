"""The committed records stay valid: each pruning run's options resolve to themselves under today's method
defaults and give the label it was recorded with, so its config hash (and every table built on it) holds."""

import json
from pathlib import Path

import pytest

from structprune.methods import get_method, resolve_options

RUNS = Path(__file__).parents[2] / "results" / "runs" / "sweep"
RECORDS = sorted(RUNS.glob("*.json"))


@pytest.mark.parametrize("path", [p for p in RECORDS if json.loads(p.read_text())["config"]["method"] != "dense"],
                         ids=lambda p: p.stem)
def test_record_options_resolve_to_themselves(path):
    config = json.loads(path.read_text())["config"]
    method = get_method(config["method"])
    assert resolve_options(method, config["options"]) == config["options"]
    assert method.label_for(config["options"]) == config["label"]


def test_the_readme_results_block_is_what_the_records_give():
    """The README's results are a generated block: a table edited by hand, or records that changed since the
    last `make report`, fail here."""
    from structprune.report import readme_block, readme_results

    table, caption = readme_results("default", "embedded", RUNS.parent)
    readme = (RUNS.parents[2] / "README.md").read_text()
    assert readme_block(table, caption) in readme, "README's results block is stale: run make report"
