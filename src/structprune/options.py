"""Option values: checked against the annotations of the function that takes them, never coerced."""

from __future__ import annotations

from collections.abc import Callable

# Smallest valid value of the whole-number and real options that have one.
OPTION_MINIMUMS = {"round_to": 1, "batch_size": 1, "batches": 1, "gradient_batches": 1, "remove_groups": 0,
                   "layer_start": 0, "layer_end": 1, "importance_tokens": 1, "excluded": 0, "damping": 0.0,
                   "seed": 0}
SEED_LIMIT = 2**63  # torch.manual_seed and the generators take a signed 64-bit seed


def check_option_values(fn: Callable, options: dict, owner: str) -> None:
    """Refuse option values of the wrong type or range, by `fn`'s annotations: "no" or 0 for a bool, 1.5 for
    a whole number, a string where a number is meant. Values are never coerced, so a run is labelled and
    recorded by exactly what it ran with."""
    import types
    import typing

    hints = typing.get_type_hints(fn)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is None:
            continue
        allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
        if value is None and type(None) in allowed:
            continue
        kinds = [t for t in allowed if t is not type(None)]
        lists = [t for t in kinds if typing.get_origin(t) is list]
        if lists and isinstance(value, list):
            (item,) = typing.get_args(lists[0])
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                continue
            raise ValueError(f"option {key} of {owner} must be a list of {item.__name__}, got {value!r}")
        ok = any((t is bool and isinstance(value, bool))
                 or (t is int and isinstance(value, int) and not isinstance(value, bool))
                 or (t is float and isinstance(value, int | float) and not isinstance(value, bool))
                 or (t is str and isinstance(value, str)) for t in kinds)
        if not ok:
            names = " or ".join({bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
                                .get(t, getattr(t, "__name__", str(t))) for t in kinds)
            raise ValueError(f"option {key} of {owner} must be {names}{' (or null)' if type(None) in allowed else ''}, "
                             f"got {value!r}")
        minimum = OPTION_MINIMUMS.get(key)
        if minimum is not None and value is not None and not isinstance(value, bool) and value < minimum:
            raise ValueError(f"option {key} of {owner} must be at least {minimum}, got {value!r}")
        if key == "seed" and value >= SEED_LIMIT:
            raise ValueError(f"option seed of {owner} must be in [0, 2**63), got {value}")
