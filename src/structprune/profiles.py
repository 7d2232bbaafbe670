"""The three run profiles, defined in one place.

`smoke` is for tests, nbval and CI (seconds); `default` is `make reproduce` on a laptop CPU with the
embedded SmolLM2-135M (paper settings scaled where the CPU needs it, and every record says so);
`paper` is the papers' own settings, for a GPU machine with network access and a hub model.
Notebooks take a `profile` parameter and call `profile_settings(profile)`; make passes `PROFILE=`.
"""

from __future__ import annotations

import copy
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "model": "embedded",
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        "eval_max_windows": 8,  # first 8 windows of WikiText-2 test
        "calibration": {  # method -> (dataset, nsamples, seqlen)
            "flap": ("wikitext2", 8, 128),
            "wanda_sp": ("c4", 8, 128),
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        "zero_shot_limit": 4,  # first 4 documents of each of the seven tasks
        "ratios": [0.2],
        "seed": 0,
    },
    "default": {
        "model": "embedded",
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        "eval_max_windows": 256,  # first 256 windows (32,768 tokens) of WikiText-2 test
        "calibration": {
            # FLAP: WikiText-2 (validation split offline: the train split is not in the data folder), 1024 x 128
            "flap": ("wikitext2", 1024, 128),
            "wanda_sp": ("c4", 128, 128),  # Wanda-sp: C4, 128 x 128, as the FLAP repo
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        # First 100 documents of each task: about 4.5 min for the seven tasks on a 2-core CPU (measured
        # 0.15-0.6 s per document); the full sets (20,265 documents) would take about 2.9 h per model.
        "zero_shot_limit": 100,
        "ratios": [0.2, 0.3, 0.5],
        "seed": 0,
    },
    "paper": {
        "model": "baffo32/decapoda-research-llama-7B-hf",  # the LLaMA-7B copy LLM-Pruner's README recommends
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        "eval_max_windows": None,  # the full test set
        "calibration": {
            "flap": ("wikitext2", 1024, 128),
            "wanda_sp": ("c4", 128, 128),
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        "zero_shot_limit": None,  # the full task sets
        "ratios": [0.2, 0.3, 0.5],
        "seed": 0,
    },
}


def profile_settings(name: str) -> dict[str, Any]:
    """A copy of the settings of profile `name` (smoke, default or paper)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    settings = copy.deepcopy(PROFILES[name])
    settings["profile"] = name
    return settings
