"""Refactoring changes no plan: every method (defaults and the notebooks' variants) reproduces the kept
units, compensation biases and pruned weights recorded in tests/data/plan_digests.json."""

import json

import pytest

from ..plan_digests import CASES, DIGESTS, case_name, digest

RECORDED = json.loads(DIGESTS.read_text())


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_plan_is_unchanged(case):
    got, recorded = digest(case), RECORDED[case_name(case)]
    for kind, counts in recorded["kept"].items():  # first the readable part: which layer keeps what
        changed = [f"layer {i}: {was} -> {now}" for i, (was, now) in enumerate(zip(counts, got["kept"][kind],
                                                                                     strict=True)) if was != now]
        assert not changed, f"kept {kind} changed: " + "; ".join(changed)
    assert got == recorded
