import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("STRUCTPRUNE_PROGRESS", "0")  # progress bars stay quiet in tests

from structprune.caches import reset_caches  # noqa: E402
from structprune.data import random_calibration  # noqa: E402
from structprune.models import load_model, tiny_llama  # noqa: E402


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Tests never write into the repository's results/."""
    monkeypatch.setenv("STRUCTPRUNE_RESULTS", str(tmp_path / "results"))


@pytest.fixture(autouse=True)
def _no_cache_between_tests():
    """Every test starts with every cache of structprune empty (`caches.reset_caches`)."""
    reset_caches()
    yield


@pytest.fixture
def tiny():
    return tiny_llama()


@pytest.fixture
def calibration():
    return random_calibration(256, nsamples=12, seqlen=24, seed=1)


@pytest.fixture
def probe():
    """Inputs that are not the calibration data."""
    return random_calibration(256, nsamples=2, seqlen=16, seed=99)


@pytest.fixture(scope="session")
def _embedded():
    return load_model("embedded")


@pytest.fixture
def embedded(_embedded):
    """A fresh copy of the embedded SmolLM2-135M (loaded once per test run)."""
    model, tokenizer = _embedded
    fresh = copy.deepcopy(model)
    fresh.structprune_source = model.structprune_source
    return fresh, tokenizer


def pytest_collection_modifyitems(config, items):
    """Tests that load the embedded model carry the `embedded` marker (`make check` leaves them out)."""
    for item in items:
        if {"_embedded", "embedded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.embedded)
