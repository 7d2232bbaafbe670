"""A pruning plan: plain data (kept units, biases, parts, parameter counts) that round-trips through JSON and
rebuilds its model (`apply.apply_plan`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .compensate import COMPENSATIONS
from .records import atomic_write_text


@dataclass
class Plan:
    method: str
    ratio: float
    kept_groups: list[list[int]]  # per layer, sorted indices of the KV groups kept
    kept_channels: list[list[int]]  # per layer, sorted indices of the MLP channels kept
    dense_groups: list[int]  # per layer, KV groups before pruning
    dense_channels: list[int]
    group_params: list[int]  # per layer, parameters of one KV group / one channel
    channel_params: list[int]
    params_before: int  # whole model
    new_bias_params: int = 0  # bias entries added to modules that had no bias
    o_bias: list[list[float] | None] = field(default_factory=list)  # per layer, added to o_proj's bias
    down_bias: list[list[float] | None] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    # Method-specific numbers behind the plan (CFSP: block importance, keep ratios), for figures and recovery.
    extras: dict = field(default_factory=dict)
    # FASP: per layer, per KV group, the value channels kept (None: all), and the parameters those cuts
    # removed (v_proj rows and o_proj columns; units outside whole groups and channels).
    kept_values: list[list[list[int]] | None] | None = None
    # The parameters that cuts inside KV groups removed (value channels or query heads: `units.py`).
    inner_params_removed: int = 0
    # Query-head units: per layer, per KV group, the query heads kept (indices within the group; None: all).
    kept_heads: list[list[list[int]] | None] | None = None
    # The parts that made the plan (score, allocation, compensation and their options, attention unit,
    # sequential): a compensation that changes kept weights (least squares) is re-run from them by
    # `apply_plan`, deterministically, on the plan's calibration tokens.
    parts: dict = field(default_factory=dict)

    def __post_init__(self):
        layers = len(self.kept_groups)
        self.o_bias = self.o_bias or [None] * layers
        self.down_bias = self.down_bias or [None] * layers

    @property
    def params_removed(self) -> int:
        units = sum((g0 - len(g)) * gp + (c0 - len(c)) * cp for g, c, g0, c0, gp, cp in zip(
            self.kept_groups, self.kept_channels, self.dense_groups, self.dense_channels,
            self.group_params, self.channel_params, strict=True))
        return units + self.inner_params_removed

    @property
    def params_after(self) -> int:
        return self.params_before - self.params_removed + self.new_bias_params

    @property
    def prunable_params(self) -> int:
        """Parameters of the prunable units (attention + MLP linears of the decoder layers)."""
        return sum(g0 * gp + c0 * cp for g0, c0, gp, cp in zip(
            self.dense_groups, self.dense_channels, self.group_params, self.channel_params, strict=True))

    def summary(self) -> dict:
        """What a record needs: counts and fractions, not the kept indices."""
        return {
            "method": self.method,
            "ratio": self.ratio,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_removed": self.params_removed,
            "removed_fraction_of_prunable": self.params_removed / max(self.prunable_params, 1),
            "removed_fraction_of_model": 1 - self.params_after / self.params_before,
            "kept_groups_per_layer": [len(g) for g in self.kept_groups],
            "kept_channels_per_layer": [len(c) for c in self.kept_channels],
            "dense_groups_per_layer": self.dense_groups,
            "dense_channels_per_layer": self.dense_channels,
            "options": self.options,
            **({"parts": self.parts} if self.parts else {}),
            **({"extras": self.extras} if self.extras else {}),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def restores_weights(self) -> bool:
        """True when the plan's compensation rewrites kept weights (re-applying it needs calibration data)."""
        name = (self.parts.get("compensation") or {}).get("name", "none")
        return COMPENSATIONS[name].rewrites_weights

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        if "value_params_removed" in data:  # its name in plans written before query-head units shared it
            data["inner_params_removed"] = data.pop("value_params_removed")
        if "parts" not in data and data.get("method") == "fasp":
            # FASP-style plans written before plans named their parts: the restoration they ran.
            options = data.get("options", {})
            data["parts"] = {"compensation": {"name": "least_squares" if options.get("restore", True) else "none",
                                              "damping": options.get("damping", 0.01),
                                              "solver_dtype": options.get("solver_dtype", "float64")},
                             "sequential": options.get("sequential", True),
                             "attention_unit": "value_channel" if options.get("attention", True) else "kv_group"}
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())
