"""Refactoring changes no plan: every method (defaults and the notebooks' variants) reproduces the kept
units, compensation biases and pruned weights recorded in tests/data/plan_digests.json."""

import json

import pytest

from .plan_digests import CASES, DIGESTS, case_name, digest

RECORDED = json.loads(DIGESTS.read_text())


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_plan_is_unchanged(case):
    assert digest(case) == RECORDED[case_name(case)]
