"""Surgery: the one place that slices weights, adds compensation biases, updates the config, and saves
and loads pruned checkpoints.

Removing a unit is exact: deleting q/k/v rows and o_proj columns of a KV group (or gate/up rows and the
down_proj column of a channel) computes the same function as zeroing them, plus the compensation bias
where a plan has one. After surgery the model is an instance of the pruned model class of its family
(`pruned_modeling.py`), whose config records every layer's widths; saving and reloading give identical
logits.

Checkpoint format (a save_pretrained-style directory, written in the folder's staging folder and renamed into
place under a lock, so it is never half-written and two writers never both win; `staging.py`): model.safetensors, config.json (model_type `structpruned_<family>`,
`layer_shapes`, `auto_map`, and transformers' own `per_layer_config` where that schema can hold the shapes),
modeling_structpruned.py, tokenizer files, and pruning.json (provenance).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .allocate import Plan
from .architectures import (
    adapter_for,
    attention_of,
    decoder_layers,
    head_dim,
    layer_queries_per_group,
    mlp_of,
    model_type_of,
    queries_per_group,
    value_head_dim,
)
from .staging import (
    STAGING,
    backup_path,
    locked,
    remove_orphans,
    remove_tree,
    stranded_backups,
    temporary_dir,
    tidy,
)

# pruned_modeling (the pruned model classes) imports transformers' modeling code, which costs seconds; it is
# imported where a model is cut or saved, so reading records and building configs stays fast.

SIDECAR = "pruning.json"
MODELING_FILE = "modeling_structpruned.py"


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
            bias_add: torch.Tensor | None = None) -> nn.Linear:
    """A new linear holding the kept rows (outputs) / columns (inputs), with `bias_add` added to its bias."""
    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    bias = linear.bias.data if linear.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows.to(bias.device))
    if bias_add is not None:
        bias_add = bias_add.to(device=weight.device, dtype=torch.float64)
        bias = (bias.double() + bias_add if bias is not None else bias_add).to(weight.dtype)
    # skip_init: no random initialisation of weights that are overwritten next (seconds per layer at 7B size)
    new = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                   dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def _unit_rows(kept: list[int], width: int) -> torch.Tensor:
    """Row (or column) indices of the kept units, each `width` consecutive rows wide."""
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    return (torch.tensor(kept, dtype=torch.long)[:, None] * width + torch.arange(width)).flatten()


def _as_tensor(values) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float64)


def prune_layer(model, index: int, kept_groups: list[int], kept_channels: list[int],
                o_bias=None, down_bias=None) -> None:
    """Cut one decoder layer in place to the kept KV groups and MLP channels, adding compensation
    biases (vectors of hidden size) to o_proj / down_proj."""
    adapter, config = adapter_for(model), model.config
    layer = decoder_layers(model)[index]
    d = head_dim(config)
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    o = attn.get_submodule(adapter.o)
    k = getattr(attn, adapter.k, None)
    groups = 0 if k is None else k.out_features // d
    n_rep = layer_queries_per_group(attn, adapter, groups, config)
    dv = value_head_dim(attn, adapter, groups, config)
    if sorted(kept_groups) != list(kept_groups) or any(not 0 <= g < groups for g in kept_groups):
        raise ValueError(f"layer {index}: kept KV groups must be sorted indices in [0, {groups}), got {kept_groups}")
    if len(kept_groups) < groups or o_bias is not None:
        if not kept_groups:
            from .pruned_modeling import EmptyAttention

            bias = _sliced(o, cols=torch.zeros(0, dtype=torch.long), bias_add=_as_tensor(o_bias))
            empty = EmptyAttention(config.hidden_size, d, getattr(attn, "layer_idx", index), bias.bias is not None,
                                   dtype=o.weight.dtype, device=o.weight.device, o_name=adapter.o)
            empty.set_submodule(adapter.o, bias)
            layer.set_submodule(adapter.attention, empty)
        else:
            q_rows, k_rows = _unit_rows(kept_groups, n_rep * d), _unit_rows(kept_groups, d)
            v_rows, o_cols = _unit_rows(kept_groups, dv), _unit_rows(kept_groups, n_rep * dv)
            attn.set_submodule(adapter.q, _sliced(attn.get_submodule(adapter.q), rows=q_rows))
            attn.set_submodule(adapter.k, _sliced(attn.get_submodule(adapter.k), rows=k_rows))
            attn.set_submodule(adapter.v, _sliced(attn.get_submodule(adapter.v), rows=v_rows))
            attn.set_submodule(adapter.o, _sliced(o, cols=o_cols, bias_add=_as_tensor(o_bias)))
    down = mlp.get_submodule(adapter.down)
    channels = down.in_features
    if sorted(kept_channels) != list(kept_channels) or any(not 0 <= c < channels for c in kept_channels):
        raise ValueError(f"layer {index}: kept channels must be sorted indices in [0, {channels})")
    if len(kept_channels) < channels or down_bias is not None:
        rows = torch.tensor(kept_channels, dtype=torch.long)
        for name in filter(None, (adapter.gate, adapter.up)):
            mlp.set_submodule(name, _sliced(mlp.get_submodule(name), rows=rows))
        mlp.set_submodule(adapter.down, _sliced(down, cols=rows, bias_add=_as_tensor(down_bias)))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(kept_channels)


def value_columns(kept_values: list[list[int]], n_rep: int, dv: int) -> torch.Tensor:
    """The o_proj input columns that value channels `kept_values[g]` of every KV group g keep: (h, c) for each
    of the group's n_rep query heads h."""
    return torch.tensor(sorted((g * n_rep + r) * dv + c for g, kept in enumerate(kept_values) for r in range(n_rep)
                               for c in kept), dtype=torch.long)


def _per_group_width(kept: list[list[int]], groups: int, limit: int, what: str) -> int:
    """The common count of a per-KV-group choice (value channels, query heads), after checking it: one sorted
    list per group, all of one length, indices in [0, limit)."""
    widths = {len(c) for c in kept}
    if len(kept) != groups or len(widths) != 1 or any(
            sorted(c) != list(c) or any(not 0 <= i < limit for i in c) for c in kept):
        raise ValueError(f"{what} must be {groups} sorted lists of equal length with indices in [0, {limit})")
    return widths.pop()


def prune_value_channels(model, index: int, kept_values: list[list[int]]) -> None:
    """FASP's attention cut: keep, in every KV group g, the value channels kept_values[g] (the same count
    in each group, so every head keeps one value width): v_proj rows (g, c) and the o_proj columns (h, c)
    of every query head h that reads group g (docs/methods.md, FASP-style)."""
    adapter, config = adapter_for(model), model.config
    layer = decoder_layers(model)[index]
    attn = attention_of(layer, adapter)
    n_rep, d = queries_per_group(config), head_dim(config)
    groups = attn.get_submodule(adapter.k).out_features // d
    dv = value_head_dim(attn, adapter, groups, config)
    width = _per_group_width(kept_values, groups, dv, f"layer {index}: kept value channels")
    if width == dv:
        return
    v_rows = torch.tensor([g * dv + c for g, kept in enumerate(kept_values) for c in kept], dtype=torch.long)
    o_cols = value_columns(kept_values, n_rep, dv)
    attn.set_submodule(adapter.v, _sliced(attn.get_submodule(adapter.v), rows=v_rows))
    attn.set_submodule(adapter.o, _sliced(attn.get_submodule(adapter.o), cols=o_cols))
    from .pruned_modeling import set_value_head_dim

    set_value_head_dim(attn, width, d, layout_dict(adapter))


def prune_query_heads(model, index: int, kept_heads: list[list[int]]) -> None:
    """Query-head units inside KV groups: keep, in every KV group g, the query heads kept_heads[g] (indices
    within the group, the same count in every group, so the layer keeps a whole queries-per-group ratio): their
    q_proj rows and o_proj columns. The KV heads stay; each serves its group's remaining query heads."""
    adapter, config = adapter_for(model), model.config
    attn = attention_of(decoder_layers(model)[index], adapter)
    d = head_dim(config)
    groups = attn.get_submodule(adapter.k).out_features // d
    n_rep = layer_queries_per_group(attn, adapter, groups, config)
    dv = value_head_dim(attn, adapter, groups, config)
    width = _per_group_width(kept_heads, groups, n_rep, f"layer {index}: kept query heads")
    if width == 0:
        raise ValueError(f"layer {index}: every KV group must keep at least one query head")
    if width == n_rep:
        return
    heads = [g * n_rep + r for g, kept in enumerate(kept_heads) for r in kept]
    attn.set_submodule(adapter.q, _sliced(attn.get_submodule(adapter.q), rows=_unit_rows(heads, d)))
    attn.set_submodule(adapter.o, _sliced(attn.get_submodule(adapter.o), cols=_unit_rows(heads, dv)))
    if hasattr(attn, "num_key_value_groups"):  # the stock attention's repeat of each KV head
        attn.num_key_value_groups = width


def head_columns(kept_heads: list[list[int]], n_rep: int, dv: int) -> torch.Tensor:
    """The o_proj input columns of the query heads `kept_heads[g]` kept in every KV group g."""
    return _unit_rows([g * n_rep + r for g, kept in enumerate(kept_heads) for r in kept], dv)


def layer_shapes_of(model) -> list[dict]:
    """Every layer's widths, read from its modules, as stored in a pruned config."""
    adapter, config = adapter_for(model), model.config
    d = head_dim(config)
    shapes = []
    for layer in decoder_layers(model):
        attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
        o = attn.get_submodule(adapter.o)
        down = mlp.get_submodule(adapter.down)
        k = getattr(attn, adapter.k, None)
        kv_heads = k.out_features // d if k is not None else 0
        dv = value_head_dim(attn, adapter, kv_heads, config)
        shapes.append({
            "num_attention_heads": o.in_features // dv if kv_heads else 0,
            "num_key_value_heads": kv_heads,
            "value_head_dim": dv,
            "intermediate_size": down.in_features,
            "o_proj_bias": o.bias is not None,
            "down_proj_bias": down.bias is not None,
        })
    return shapes


def native_per_layer_config(model, shapes: list[dict]) -> dict[int, dict] | None:
    """The pruned widths in transformers' own per-layer schema (`per_layer_config`, transformers 5.15 and later:
    sparse per-layer overrides of config attributes, and `skip` for a sub-layer that is absent), so that a
    checkpoint becomes native once the family's stock modeling builds layers from it. None where the schema
    cannot hold the shapes: narrower value heads (one head_dim serves q, k and v), an empty sub-layer that
    keeps a bias (`skip` drops the whole sub-layer), an MLP on the decoder layer itself with no channel left
    (nothing to name in `skip`), or a bias the family's config cannot switch on."""
    adapter, config = adapter_for(model), model.config
    per_layer: dict[int, dict] = {}
    for index, shape in enumerate(shapes):
        if shape["num_attention_heads"] and shape["value_head_dim"] != head_dim(config):
            return None
        # per sub-layer: its module name, whether it kept any unit, its widths, its bias and the config's switch
        sublayers = ((adapter.attention, shape["num_attention_heads"],
                      {"num_attention_heads": shape["num_attention_heads"],
                       adapter.kv_heads_attribute: shape["num_key_value_heads"]},
                      shape["o_proj_bias"], adapter.o_bias_switch),
                     (adapter.mlp, shape["intermediate_size"], {adapter.width_attribute: shape["intermediate_size"]},
                      shape["down_proj_bias"], adapter.down_bias_switch))
        overrides, skip = {}, []
        for module, units, widths, biased, switch in sublayers:
            if not units:
                if biased or not module:
                    return None
                skip.append(module)
                continue
            overrides.update({k: v for k, v in widths.items() if k})
            if biased:
                native = getattr(config, switch, None) if switch else None
                if native is None:
                    return None  # the family's config has no switch for this bias
                overrides[switch] = True
        # only what differs from the global config, as transformers itself stores it
        overrides = {k: v for k, v in overrides.items() if getattr(config, k, None) != v}
        if skip:
            overrides["skip"] = skip
        if overrides:
            per_layer[index] = overrides
    return per_layer


def layout_dict(adapter) -> dict:
    """The module layout a pruned config records (the adapter's names), read by the pruned model classes."""
    return {"layers": adapter.layers, "attention": adapter.attention, "q": adapter.q, "k": adapter.k,
            "v": adapter.v, "o": adapter.o, "mlp": adapter.mlp, "gate": adapter.gate, "up": adapter.up,
            "down": adapter.down, "q_norm": adapter.q_norm, "k_norm": adapter.k_norm}


def finalize_pruned(model):
    """Turn a model whose layers were cut into an instance of its family's pruned class, with a config
    that records every layer's widths (and `auto_map`, for loading with remote code)."""
    from .pruned_modeling import PRUNED_CLASSES

    family = model_type_of(model.config)
    config_class, model_class = PRUNED_CLASSES[family]
    old = model.config
    values = {k: v for k, v in old.to_dict().items()
              if k not in ("model_type", "transformers_version", "layer_shapes", "layout", "base_model_type",
                           "auto_map", "architectures", "per_layer_config")}
    shapes = layer_shapes_of(model)
    new = config_class(**values, layer_shapes=shapes, layout=layout_dict(adapter_for(model)), base_model_type=family,
                       per_layer_config=native_per_layer_config(model, shapes))
    new.auto_map = {"AutoConfig": f"{MODELING_FILE[:-3]}.{config_class.__name__}",
                    "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{model_class.__name__}"}
    new.architectures = [model_class.__name__]
    new._attn_implementation = old._attn_implementation
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    model.config = new
    model.__class__ = model_class
    return model


def apply_plan(model, plan: Plan, calibration: torch.Tensor | None = None):
    """Apply a plan to a model (in place) and return the pruned model.

    A plan whose compensation rewrites kept weights (least squares) is replayed: the same cuts, and the
    restoration computed again from `calibration`, the token ids the plan was made with."""
    if plan.restores_weights:
        if calibration is None:
            raise ValueError(f"the {plan.method} plan refits kept weights by least squares: pass calibration= (the "
                             "token ids it was pruned with) so that apply_plan can recompute them")
        from .pipeline import replay

        replay(model, plan, calibration)
        return model
    layers = decoder_layers(model)
    if len(plan.kept_groups) != len(layers):
        raise ValueError(f"the plan has {len(plan.kept_groups)} layers, the model {len(layers)}")
    for index in range(len(layers)):
        if plan.kept_values and plan.kept_values[index] is not None:  # value-channel units
            prune_value_channels(model, index, plan.kept_values[index])
        if plan.kept_heads and plan.kept_heads[index] is not None:  # query-head units
            prune_query_heads(model, index, plan.kept_heads[index])
        prune_layer(model, index, plan.kept_groups[index], plan.kept_channels[index],
                    plan.o_bias[index], plan.down_bias[index])
    return finalize_pruned(model)


def save_pruned(model, tokenizer, path: str | Path, provenance: dict | None = None, overwrite: bool = False,
                before_commit: Callable[[], object] | None = None) -> Path:
    """Save a pruned model as a checkpoint directory, atomically (see the module docstring).

    before_commit: runs once the new checkpoint is in place and before a replaced one is deleted (the run's
    record, say); if it fails, the new checkpoint is removed and the replaced one restored."""
    from . import pruned_modeling
    from .pruned_modeling import PRUNED_CLASSES

    path = Path(path)
    check_output(path, overwrite)
    if model.config.model_type not in {c.model_type for c, _ in PRUNED_CLASSES.values()}:
        model = finalize_pruned(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)  # what a killed save left behind
    tmp = temporary_dir(path)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copyfile(pruned_modeling.__file__, tmp / MODELING_FILE)
        (tmp / SIDECAR).write_text(json.dumps(provenance or {}, indent=2, default=str) + "\n")
        install_checkpoint(tmp, path, overwrite, before_commit)
    finally:
        remove_tree(tmp)
        tidy(path.parent)
    return path


def install_checkpoint(tmp: Path, path: Path, overwrite: bool = False,
                       before_commit: Callable[[], object] | None = None) -> None:
    """Move a finished checkpoint folder `tmp` to `path`, under `path`'s lock, so two writers never both win.

    Without `overwrite`, an output that appeared meanwhile is never replaced (the loser fails); only a checkpoint
    left without its record by a killed run is. A replaced checkpoint waits in the staging folder until the new
    one is in place and `before_commit` succeeded; any failure in between restores it."""
    with locked(path):
        backup = None
        if path.exists() or path.is_symlink():
            orphan = is_orphan(path)
            if not overwrite and not orphan:
                raise FileExistsError(f"{path} appeared while this run was writing it (another run wrote it first): "
                                      "nothing was replaced; choose another --output, or pass --overwrite")
            if not is_checkpoint(path):
                raise FileExistsError(f"{path} is not a structprune checkpoint: --overwrite only replaces a pruned "
                                      "checkpoint; choose another --output")
            backup = backup_path(path)
            os.replace(path, backup)
        try:
            os.replace(tmp, path)
            if before_commit is not None:
                before_commit()
        except BaseException:  # the new checkpoint goes, the one it replaced comes back
            if path.exists() and not tmp.exists():
                remove_tree(path)
            if backup is not None:
                os.replace(backup, path)
            raise
        if backup is not None:
            remove_tree(backup)


def read_sidecar(path: Path) -> dict:
    """A checkpoint's provenance (pruning.json); a clear error, naming the file, when it is not JSON."""
    sidecar = Path(path) / SIDECAR
    try:
        value = json.loads(sidecar.read_text())
    except ValueError as error:
        raise ValueError(f"{sidecar} is not valid JSON ({error}): the checkpoint's provenance is damaged; restore "
                         "the file or re-run the pruning") from None
    if not isinstance(value, dict):
        raise ValueError(f"{sidecar} holds a {type(value).__name__}, not the provenance object structprune writes: "
                         "restore the file or re-run the pruning")
    return value


def is_checkpoint(path: Path) -> bool:
    """A structprune pruned checkpoint: a folder with the provenance sidecar and a pruned config."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and (path / SIDECAR).is_file()
            and str(config.get("model_type", "")).startswith("structpruned_"))


CHECKPOINT_TOKEN = "checkpoint_token"


def is_orphan(path: Path) -> bool:
    """A checkpoint written by `structprune prune` whose run record was never written (the run was killed
    between the two): its sidecar's token is named by no prune record."""
    from .records import results_dir

    if not is_checkpoint(path):
        return False
    try:
        token = read_sidecar(path).get(CHECKPOINT_TOKEN)
    except (OSError, ValueError):
        return False
    if not token:
        return False  # saved by the library, not by a run that writes a record
    for record in (results_dir() / "runs" / "prune").glob("*.json"):
        try:
            if json.loads(record.read_text()).get(CHECKPOINT_TOKEN) == token:
                return False
        except (OSError, ValueError):
            continue
    return True


def recover_stranded(path: Path) -> list[str]:
    """Finish replacements of `path` that a killed overwrite left half-done (only under --overwrite): a stranded
    backup that is a real structprune checkpoint is restored when `path` is missing or holds a checkpoint
    without its record, and removed when `path` holds a complete one. What was done."""
    done = []
    for backup in reversed(stranded_backups(path)):  # the newest first
        if not is_checkpoint(backup):
            continue
        with locked(path):
            if not backup.exists():
                continue
            if not path.exists() or is_orphan(path):
                if path.exists():
                    remove_tree(path)
                os.replace(backup, path)
                done.append(f"restored {path} from the backup an interrupted overwrite left")
            else:
                remove_tree(backup)
                done.append(f"removed the backup of {path} that an interrupted overwrite left (superseded)")
    tidy(path.parent)
    return done


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, a checkpoint destination that cannot be written: an existing path without
    --overwrite (unless it is a checkpoint a killed run left without its record), anything but a structprune
    checkpoint with it, a folder that cannot be written. Acts on stranded backups only once it accepts."""
    import warnings

    path = Path(path)
    if path.exists() or path.is_symlink():
        orphan = is_orphan(path)
        if not overwrite and not orphan:
            raise FileExistsError(f"{path} exists: choose another --output, or pass --overwrite (overwrite=True) "
                                  "to replace the checkpoint there")
        if not path.is_dir() or not is_checkpoint(path):
            raise FileExistsError(f"{path} is not a structprune checkpoint (no {SIDECAR} and pruned config.json): "
                                  "--overwrite only replaces a pruned checkpoint; choose another --output")
        if orphan and not overwrite:
            warnings.warn(f"{path} holds a checkpoint that a killed run left without its record: this run replaces "
                          "it", stacklevel=2)
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {parent} is not a writable folder; choose another --output")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".structprune-probe-", dir=parent))
        probe.rmdir()
    except OSError as error:
        raise PermissionError(f"cannot write {path}: {error.strerror} in {parent}; choose another --output") from None
    if overwrite and path.parent.is_dir():
        for message in recover_stranded(path):
            warnings.warn(message, stacklevel=2)
    elif stranded_backups(path):
        warnings.warn(f"a checkpoint that an interrupted overwrite of {path} replaced waits in "
                      f"{path.parent / STAGING}; run with --overwrite to restore or discard it", stacklevel=2)


def check_checkpoint(path: str | Path) -> None:
    """Refuse a pruned checkpoint whose weights do not match its config: a missing shard, a missing tensor,
    or a tensor whose shape is not the one the config's per-layer widths imply (tampered or half-copied).
    Reads only the safetensors headers and builds the model on the meta device (no memory)."""
    from transformers import AutoConfig

    from .models import check_local_weights, safetensors_header, weight_files
    from .pruned_modeling import PRUNED_CLASSES

    path = Path(path)
    check_local_weights(path)  # every weight file there, complete, and safetensors
    stored = {key: tuple(entry["shape"]) for name in weight_files(path)
              for key, entry in safetensors_header(path / name).items()}
    classes = {conf.model_type: cls for conf, cls in PRUNED_CLASSES.values()}
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in classes:
        raise ValueError(f"{path}: model_type {model_type!r} is not a structprune pruned family: "
                         f"supported are {', '.join(sorted(classes))}")
    config = AutoConfig.from_pretrained(path)
    model_class = classes[config.model_type]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    wrong = [f"{k}: config implies {list(shape)}, file holds {list(stored[k])}"
             for k, shape in expected.items() if k in stored and stored[k] != shape]
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    absent = sorted(set(expected) - set(stored) - tied)
    extra = sorted(set(stored) - set(expected))  # e.g. a compensation bias the config no longer declares
    if wrong or absent or extra:
        details = "; ".join(wrong[:3] + [f"missing tensor {k}" for k in absent[:3]]
                            + [f"unexpected tensor {k}" for k in extra[:3]])
        raise ValueError(f"{path}: the weights do not match config.json's layer shapes ({details}"
                         f"{'; ...' if len(wrong) + len(absent) + len(extra) > 3 else ''}). The checkpoint was "
                         "modified or copied incompletely; re-run the pruning or restore the original files.")


def load_pruned(path: str | Path, dtype: torch.dtype | None = None, device: str | None = None):
    """Reload a pruned checkpoint (no remote code, safetensors only) -> (model, tokenizer)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a pruned checkpoint: config.json is missing")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if not model_type.startswith("structpruned_"):
        raise ValueError(f"{path} holds a {model_type!r} model, not a structprune pruned checkpoint")
    if not (path / SIDECAR).is_file():
        raise FileNotFoundError(f"{path}/{SIDECAR} is missing: the checkpoint's provenance is lost; re-run the pruning")
    from .models import load_model  # checks the folder (`models.check_local_folder`) before it loads

    return load_model(str(path), dtype=dtype, device=device)
