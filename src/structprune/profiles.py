"""The three run profiles, defined in one place.

`smoke` is for tests, nbval and CI (a tiny random model with SmolLM2's tokenizer: seconds); `default` is `make reproduce` on a laptop CPU with the
embedded SmolLM2-135M (paper settings scaled where the CPU needs it, and every record says so);
`paper` is the papers' own settings, for a GPU machine with network access and a hub model.
Notebooks take a `profile` parameter and call `profile_settings(profile)`; make passes `PROFILE=`.
"""

from __future__ import annotations

import copy
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        # A tiny random LLaMA with SmolLM2's tokenizer (models.tiny_smollm2_checkpoint): nbval and CI check that
        # every notebook runs end to end, in seconds; its numbers mean nothing.
        "model": "tiny-smollm2",
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        "eval_max_windows": 8,  # first 8 windows of WikiText-2 test
        "calibration": {  # method -> (dataset, nsamples, seqlen)
            "flap": ("wikitext2", 8, 128),
            "wanda_sp": ("c4", 8, 128),
            "fasp": ("wikitext2", 4, 128),
            "cfsp": ("wikitext2", 4, 128),
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        "zero_shot_limit": 4,  # first 4 documents of each of the seven tasks
        "zero_shot_dtype": "float32",
        "headline_zero_shot": {"limit": 4, "dtype": "float32"},  # notebook 06: the two lowest at each target
        "ratios": [0.2],
        "matched_targets": [0.02, 0.04],  # the tiny model is mostly embeddings: small shares of it
        # notebook 06's headline rows (dense, the best method at each target) under longer protocols
        "headline_perplexity": {"seqlens": [128, 256], "max_windows": 4, "dtype": "float32"},
        # notebook 06's grid of compositions at the matched targets (see the default profile)
        "grid": {"scores": ["magnitude", "wanda"], "allocations": ["uniform", "global"],
                 "compensations": ["mean_bias", "affine_least_squares"], "calibration": "flap",
                 "eval_dtype": "float32"},
        "ablation_max_windows": 8,  # FLAP ablations: evaluation subset
        "ablation_nsamples": [4, 8],  # FLAP ablations: calibration sample counts
        # LoRA recovery (structprune.recovery.lora_recover options): a token run
        "recovery": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "cutoff_len": 64},
        # speed benchmark: (batch, prompt tokens) prefill shapes, decode batches, new tokens per decode
        "speed": {"prefill_shapes": [[1, 16], [2, 32]], "decode_batches": [1], "new_tokens": 8},
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
    },
    "default": {
        "model": "embedded",
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        # The default profile is sized so that each notebook's recorded compute stays within 60 minutes on a
        # 2-core CPU (the README states each notebook's cost and the total). Each setting below says what it
        # scales down and why.
        "eval_max_windows": 64,  # first 64 windows (8,192 tokens) of WikiText-2 test: about 20 s per model
        "calibration": {
            # FLAP: WikiText-2 (validation split offline: the train split is not in the data folder), 512 x 128
            # instead of the paper's 1024 (its pass costs 4.5 min on the CPU and three notebooks need it;
            # the ablation below shows the sample count's effect)
            "flap": ("wikitext2", 512, 128),
            "wanda_sp": ("c4", 128, 128),  # Wanda-sp: C4, 128 x 128, as the FLAP repo
            # FASP: WikiText-2 like the paper, but 32 x 256 tokens instead of 128 x 2048 (its float64 Gram
            # matrices over 262k tokens would take ~20 min per run on the CPU)
            "fasp": ("wikitext2", 32, 256),
            # CFSP: 32 x 1024 instead of the code's 128 x 1024: notebook 03 passes over these tokens for CFSP and
            # again for its same-footing FFN-only baselines (about 20 min at 128 x 1024 on the CPU)
            "cfsp": ("wikitext2", 32, 1024),
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        # Notebooks 01-04 (the papers' zero-shot tables): the first 50 documents of each task, about 25 s per model
        # on a 2-core CPU (the full sets, 20,265 documents, about 2 h per model in float32).
        "zero_shot_limit": 50,
        "zero_shot_dtype": "float32",
        # Notebook 06, where methods are ranked: the dense model and the two lowest-perplexity methods at each target
        # on the first 500 documents of each task (3,500), compared pairwise on the same documents, whose 95 %
        # intervals are about +-1.5 points on the seven-task average; bfloat16 (this CPU's AMX units): 1.5-2.5 min
        # per model (docs/reproduction.md, "Evaluation cost").
        "headline_zero_shot": {"limit": 500, "dtype": "bfloat16"},
        "ratios": [0.2, 0.3, 0.5],
        "matched_targets": [0.2, 0.4],  # notebook 06: shares of the whole model removed, every method alike
        # Notebook 06's headline rows (dense, the best method at each target) on the full WikiText-2 test set
        # (304,986 tokens) at seqlen 128 and 2048. bfloat16 halves the cost on a CPU with AMX units (64-window
        # dense perplexity 63.94 against 64.03 in float32); about 19 minutes for the three models.
        "headline_perplexity": {"seqlens": [128, 2048], "max_windows": None, "dtype": "bfloat16"},
        # Notebook 06's grid: every score x allocation x compensation below at each matched target, one-shot on
        # the dense model with FLAP's calibration tokens (one statistics pass and one Gram pass serve every cell),
        # evaluated on WikiText-2 test and C4 validation (the profile's 64 windows of 128) in bfloat16, which
        # costs a third of float32 here (dense 63.94 against 64.03); the paper methods are evaluated again
        # the same way for the comparison. About 9 s per cell: 24 cells, 6 minutes with both passes.
        # Left out here to keep notebook 06 within its hour, kept in the paper profile: compensation "none"
        # (FLAP's bias wins on every cell of notebook 01's ablation), the Taylor score (a backward pass over the calibration tokens), and,
        # after a run of all 48 cells with them, the magnitude score (no data: 7.5-128 x the perplexity of the
        # best data score with the same allocation and compensation) and the unstandardised global allocation
        # (with a data score, never the lowest of the three allocations: 0 of 12 cells).
        "grid": {"scores": ["wanda", "wifv", "activation"], "allocations": ["uniform", "flap"],
                 "compensations": ["mean_bias", "affine_least_squares"], "calibration": "flap",
                 "eval_dtype": "bfloat16"},
        "ablation_max_windows": 64,  # FLAP ablations: first 64 windows (8,192 tokens), as the main runs
        "ablation_nsamples": [64, 128, 256, 512],  # FLAP ablations: calibration sample counts
        # LoRA recovery: 10 steps of batch 4 (40 Alpaca rows, cutoff 256) instead of 2 epochs of 50k rows: about
        # 1.5 min per run on the CPU (seven runs: five recovered models, two rebuilt for zero-shot)
        "recovery": {"max_steps": 10, "batch_size": 4, "micro_batch_size": 4, "cutoff_len": 256},
        # 32 new tokens per decode (128 took 2 min per model at batch 1 and 8): about 1 min per speed record
        "speed": {"prefill_shapes": [[1, 128], [1, 512], [8, 512]], "decode_batches": [1, 8],
                  "new_tokens": 32},
        "seed": 0,
        # device/dtype of every run (structprune.experiments): CPU float32 on any machine, so the records agree
        "device": "cpu",
        "dtype": "float32",
    },
    "paper": {
        # LLaMA-7B (the papers' weights). LLM-Pruner's README points to baffo32/decapoda-research-llama-7B-hf, whose
        # weights are pickled .bin shards; structprune loads safetensors only, so the paper profile uses this copy.
        "model": "huggyllama/llama-7b",
        "eval_dataset": "wikitext2",
        "eval_seqlen": 128,
        "eval_max_windows": None,  # the full test set
        "calibration": {
            "flap": ("wikitext2", 1024, 128),
            "wanda_sp": ("c4", 128, 128),
            "fasp": ("wikitext2", 128, 2048),
            "cfsp": ("wikitext2", 128, 1024),
            "magnitude": (None, 0, 0),
            "random": (None, 0, 0),
        },
        "zero_shot_limit": None,  # the full task sets
        "zero_shot_dtype": "float32",
        "headline_zero_shot": {"limit": None, "dtype": "float32"},
        "ratios": [0.2, 0.3, 0.5],
        "matched_targets": [0.2, 0.4],
        "headline_perplexity": {"seqlens": [128, 2048], "max_windows": None, "dtype": "float32"},
        "grid": {"scores": ["magnitude", "wanda", "wifv", "activation", "taylor"],
                 "allocations": ["uniform", "flap", "global"],
                 "compensations": ["none", "mean_bias", "least_squares", "affine_least_squares"],
                 "calibration": "flap", "eval_dtype": "float16"},
        "ablation_max_windows": None,  # the full test set
        "ablation_nsamples": [128, 256, 512, 1024, 2048],
        # LLM-Pruner's recipe: 2 epochs, batch 64 (micro 4), cutoff 256 (the local Alpaca subset offline)
        "recovery": {"max_steps": None, "epochs": 2.0, "batch_size": 64, "micro_batch_size": 4, "cutoff_len": 256},
        "speed": {"prefill_shapes": [[1, 128], [1, 512], [8, 128], [8, 512]], "decode_batches": [1, 8],
                  "new_tokens": 128},
        "seed": 0,
        "device": "cuda",  # the papers ran LLaMA-7B in float16 on one GPU
        "dtype": "float16",
    },
}


def profile_settings(name: str) -> dict[str, Any]:
    """A copy of the settings of profile `name` (smoke, default or paper)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    settings = copy.deepcopy(PROFILES[name])
    settings["profile"] = name
    return settings
