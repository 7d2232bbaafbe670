"""Checkpoints: every read and write of a pruned checkpoint folder, in memory and streamed.

A checkpoint is a save_pretrained-style folder: safetensors weights (one file, or one shard per layer with an
index), config.json (model_type `structpruned_<family>`, `layer_shapes`, `auto_map`, and transformers' own
`per_layer_config` where it can hold the shapes), modeling_structpruned.py, tokenizer files and pruning.json
(provenance). It is written in the folder's staging folder and renamed into place under a lock (`staging.py`),
so it is never half-written, two writers never both win, and a replaced checkpoint is kept until the new one
and its record are in place. Weights are read from safetensors only, and checked against the config before any
model is built.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path

import torch
from torch import nn

from .paths import results_dir
from .staging import (
    STAGING,
    backup_path,
    check_free_space,
    locked,
    remove_orphans,
    remove_tree,
    stranded_backups,
    temporary_dir,
    tidy,
)
from .surgery import MODELING_FILE, finalize_pruned

SIDECAR = "pruning.json"


def save_pruned(model, tokenizer, path: str | Path, provenance: dict | None = None, overwrite: bool = False,
                before_commit: Callable[[], object] | None = None) -> Path:
    """Save a pruned model as a checkpoint directory, atomically (see the module docstring).

    before_commit: runs once the new checkpoint is in place and before a replaced one is deleted (the run's
    record, say); if it fails, the new checkpoint is removed and the replaced one restored."""
    from .pruned_modeling import (
        PRUNED_CLASSES,  # transformers' modeling code: loaded where a checkpoint is written
    )

    path = Path(path)
    check_output(path, overwrite)
    if model.config.model_type not in {c.model_type for c, _ in PRUNED_CLASSES.values()}:
        model = finalize_pruned(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)  # what a killed save left behind
    tmp = temporary_dir(path)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        write_beside_weights(tmp, tokenizer, provenance or {})
        install_checkpoint(tmp, path, overwrite, before_commit)
    finally:
        remove_tree(tmp)
        tidy(path.parent)
    return path


def write_beside_weights(folder: Path, tokenizer, provenance: dict) -> None:
    """What every checkpoint holds beside its weights and config: the tokenizer, the modeling file (so that remote
    code and lm-eval load it without structprune) and the provenance sidecar."""
    from . import pruned_modeling  # transformers' modeling code: loaded where a checkpoint is written

    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    shutil.copyfile(pruned_modeling.__file__, folder / MODELING_FILE)
    (folder / SIDECAR).write_text(json.dumps(provenance, indent=2, default=str) + "\n")


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

    from .pruned_modeling import (
        PRUNED_CLASSES,  # transformers' modeling code, only when a checkpoint is checked
    )

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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def weight_files(where: Path) -> list[str]:
    """The weight files a local checkpoint's safetensors index (or single file) names, all of them
    safetensors inside the folder; anything that would be unpickled is refused."""
    index = where / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index (no weight_map): {error}") from None
        unsafe = [f for f in files if not f.endswith(".safetensors") or "/" in f or "\\" in f or f.startswith(".")]
        if unsafe:
            raise ValueError(f"{index} points at {', '.join(unsafe[:3])}: structprune reads weights only from "
                             "safetensors files inside the checkpoint folder (pickled .bin/.pt files can run code "
                             "when loaded). Convert the weights to safetensors where you trust them.")
        return files
    if (where / "model.safetensors").is_file():
        return ["model.safetensors"]
    pickles = sorted(p.name for p in where.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise FileNotFoundError(
        f"{where} has no safetensors weights{f' (only {pickles[0]})' if pickles else ''}: no model.safetensors nor a "
        "safetensors index. structprune never unpickles a model (.bin/.pt files can run code when loaded). Convert "
        "it once where you trust the file (`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, "
        "safe_serialization=True)`), or re-run the pruning that wrote it.")


def safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file, after checking that the file holds every byte it declares
    (an 8-byte header length, the JSON header, then the data the offsets name)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is empty or truncated ({size} bytes): not a safetensors file")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise ValueError(f"{path} is truncated: its header declares {length} bytes, the file has {size}")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ValueError(f"{path} has a damaged header: not a safetensors file") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + length + end > size:
        raise ValueError(f"{path} is truncated: its tensors need {8 + length + end:,} bytes, the file has {size:,}")
    return tensors


def check_local_folder(where: Path) -> None:
    """Refuse, before loading, a local folder whose weights are incomplete, or a structprune checkpoint whose
    config or provenance was edited or damaged (per-layer widths, model_type, pruning.json)."""
    check_local_weights(where)
    if not (where / SIDECAR).is_file():
        return
    read_sidecar(where)  # valid JSON, or an error naming the file
    try:
        model_type = json.loads((where / "config.json").read_text()).get("model_type", "")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{where / 'config.json'} is not a JSON object ({error}): restore the checkpoint's "
                         "config.json or save it again") from None
    if not str(model_type).startswith("structpruned_"):
        raise ValueError(f"{where} holds structprune's {SIDECAR} but config.json names model_type {model_type!r}: "
                         "a pruned checkpoint's model_type is structpruned_<family>; restore the original "
                         "config.json (the edited one cannot describe the pruned widths)")
    check_checkpoint(where)


def check_local_weights(where: Path) -> None:
    """Refuse a local checkpoint whose weights are not all complete safetensors files: a missing shard, an
    index that points at a pickle, a truncated or empty file."""
    for name in weight_files(where):
        path = where / name
        if not path.is_file():
            raise FileNotFoundError(f"{where} is incomplete: weight file {name} (named by its index) is missing. "
                                    "Copy the whole folder again.")
        try:
            safetensors_header(path)
        except ValueError as error:
            raise ValueError(f"{error}. Copy or save the checkpoint again.") from None


class CheckpointWriter:
    """A pruned checkpoint written shard by shard into a temporary sibling of `path`, renamed into place by
    `finish` (see the module docstring)."""

    def __init__(self, path: str | Path, overwrite: bool = False, expected_bytes: int = 0):

        self.path = Path(path)
        check_output(self.path, overwrite)
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path.parent)  # what an interrupted run left behind
        check_free_space(self.path, expected_bytes)
        self.tmp = temporary_dir(self.path)
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        # One shard is written in the background while the next layer is read and cut (the disk and the CPU
        # work at once); at most one write is in flight, so at most one written layer waits in memory.
        self._writing: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="structprune-writer")

    def write(self, shard: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write one shard (atomically within the temporary folder), in the background; a failure of the
        previous write is raised here."""
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        self.wait()
        self._writing = self._executor.submit(self._write_now, shard, tensors)
        for key, tensor in tensors.items():
            self.weight_map[key] = shard
            self.total_bytes += tensor.numel() * tensor.element_size()

    def _write_now(self, shard: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        try:
            save_file(tensors, str(self.tmp / (shard + ".partial")), metadata={"format": "pt"})
            os.replace(self.tmp / (shard + ".partial"), self.tmp / shard)
        except Exception as error:  # safetensors reports a failed write as its own error type
            code = getattr(error, "errno", None)
            if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error):
                raise OSError(code or errno.ENOSPC, f"disk full while writing {shard} of {self.path}: nothing was "
                              "kept; free space or choose another --output, then run again") from None
            raise

    def wait(self) -> None:
        """Wait for the write in flight; its error, if it failed (the temporary folder is then removed)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                writing.result()
            except BaseException:
                self.abort()
                raise

    def finish(self, model: nn.Module, tokenizer, provenance: dict,
               before_commit: Callable[[], object] | None = None) -> Path:
        """Write the index, config, tokenizer, modeling file and provenance; rename into place
        (`install_checkpoint`: before_commit runs before a replaced checkpoint is deleted)."""
        self.wait()
        self._executor.shutdown()
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        model.config.save_pretrained(self.tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(self.tmp)
        write_beside_weights(self.tmp, tokenizer, provenance)
        try:
            install_checkpoint(self.tmp, self.path, self.overwrite, before_commit)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            tidy(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Remove the temporary folder (after any write in flight)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            wait_futures([writing])
        self._executor.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)
        tidy(self.path.parent)


def shard_name(number: int, total: int) -> str:
    return f"model-{number:05d}-of-{total:05d}.safetensors"
