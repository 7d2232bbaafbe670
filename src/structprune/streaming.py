"""Streamed pruning and evaluation: models larger than memory, one decoder layer's weights resident.

The model's skeleton is built on the meta device (no memory); the embeddings, the final norm and the head
are read from the checkpoint and stay resident, with the calibration activations. Each decoder layer's
weights are read from the safetensors shards when a pass reaches the layer, and dropped (or written to the
output checkpoint, once cut) when it leaves:

    LayerStream.layer(i)              read layer i; on exit, back to the meta device
    LayerStream.layer(i, write=True)  read layer i; on exit, write its (cut) tensors as shard i+1, then drop

Passes over the weights, per kind of method (`pipeline.run` with `stream=`):
    sequential (Wanda-sp, FASP-style)  1 pass: each layer is calibrated, scored, cut, re-run and written
                                       before the next layer is read
    one-shot (FLAP, CFSP, magnitude,   2 passes: the scoring pass takes every layer's statistics and scores;
    random, global allocations)        the allocation needs all of them before any cut (FLAP's global
                                       threshold, CFSP's block budgets); the cutting pass reads each layer
                                       again, compensates, cuts and writes it
    LM-loss gradients (LLM-Pruner,     cannot stream: the backward pass needs every layer at once; load the
    SAAP-style)                        model with accelerate offload (--device auto) instead
The result is the in-memory result: the same operations on the same tensors, one layer at a time.

The output checkpoint is a pruned checkpoint directory like `checkpoint.save_pruned`'s, with one shard per
decoder layer plus one for the rest, written into a temporary sibling that is renamed into place at the
end: an interrupted run leaves no half-written checkpoint, and the next run removes its temporary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .architectures import adapter_for, decoder_layers
from .checkpoint import CheckpointWriter, check_local_weights, safetensors_header, shard_name, weight_files
from .evaluate import BATCH_TOKENS, check_windows, evaluation_ids, summarise_windows, with_protocol
from .progress import progress
from .stats import all_finite, capture_layer_inputs


class CheckpointReader:
    """The tensors of a local safetensors checkpoint (one file or an index of shards), read by name.

    Every file's header is checked when the reader is made (missing shard, truncated file, pickle), so a
    damaged checkpoint fails in a second, not after hours."""

    def __init__(self, where: str | Path):
        self.where = Path(where)
        if not (self.where / "config.json").is_file():
            raise FileNotFoundError(f"{self.where} is not a model checkpoint folder: config.json is missing")
        check_local_weights(self.where)
        self.files: dict[str, str] = {}  # tensor name -> file
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, str] = {}
        self.offsets: dict[str, tuple[int, int]] = {}  # byte range in the file's data section
        for name in weight_files(self.where):
            for key, entry in safetensors_header(self.where / name).items():
                if entry["dtype"] not in SAFETENSORS_DTYPES:
                    raise ValueError(f"{self.where / name}: tensor {key} is stored as {entry['dtype']}, which "
                                     f"streaming does not read (it reads {', '.join(SAFETENSORS_DTYPES)})")
                self.files[key], self.shapes[key], self.dtypes[key] = name, tuple(entry["shape"]), entry["dtype"]
                self.offsets[key] = tuple(entry["data_offsets"])

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.files if name.startswith(prefix)]

    def bytes_at(self, dtype: torch.dtype) -> int:
        """What every tensor of the checkpoint takes in memory in `dtype`."""
        element = torch.empty(0, dtype=dtype).element_size()
        return sum(int(torch.Size(shape).numel()) for shape in self.shapes.values()) * element

    def read(self, names: list[str], dtype: torch.dtype, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The named tensors, converted to `dtype` on `device`. Plain reads at the header's offsets, not a
        memory map: no page of the checkpoint stays mapped into the process (and counted in its memory)."""
        tensors = {}
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for file, keys in by_file.items():
            path = self.where / file
            try:
                with open(path, "rb") as handle:
                    data_start = 8 + int.from_bytes(handle.read(8), "little")
                    for key in keys:
                        begin, end = self.offsets[key]
                        buffer = bytearray(end - begin)
                        handle.seek(data_start + begin)
                        if handle.readinto(buffer) != len(buffer):
                            raise OSError(f"{path} ended early: the shard was truncated after it was opened")
                        stored = SAFETENSORS_DTYPES[self.dtypes[key]]
                        tensor = (torch.frombuffer(buffer, dtype=stored) if buffer else torch.empty(0, dtype=stored))
                        tensors[key] = tensor.view(self.shapes[key]).to(device=device, dtype=dtype)
            except OSError as error:
                raise OSError(f"cannot read {', '.join(keys[:2])} from {path}: {error}. The shard is damaged or "
                              "unreadable: copy the checkpoint again") from None
        return tensors


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def skeleton(reader: CheckpointReader, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """The model of `reader`'s config with every decoder layer on the meta device, and everything else
    (embeddings, final norm, head, rotary buffers) read from the checkpoint onto `device`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import pruned_modeling  # noqa: F401  (registers the pruned-checkpoint classes)

    config = AutoConfig.from_pretrained(reader.where)  # no remote code
    with init_empty_weights():  # parameters on meta; buffers (rotary frequencies) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if torch.device(device).type != "cpu":
        for buffer_name, buffer in list(model.named_buffers()):
            owner_name, _, name = buffer_name.rpartition(".")
            owner = model.get_submodule(owner_name)
            owner.register_buffer(name, buffer.to(device), persistent=name not in owner._non_persistent_buffers_set)
    layers = adapter_for(model).layers + "."
    wanted = [k for k in model.state_dict() if not k.startswith(layers)]
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in wanted if k not in reader.files and not (tied and k == "lm_head.weight")]
    if missing:
        raise ValueError(f"{reader.where}: the weights lack {', '.join(missing[:3])}, which its config.json implies: "
                         "the checkpoint is incomplete; copy it again")
    model.load_state_dict(reader.read([k for k in wanted if k in reader.files], dtype, device), strict=False,
                          assign=True)
    if tied:
        model.tie_weights()
    for name, param in model.named_parameters():
        if param.device.type != "meta" and not all_finite(param):
            raise FloatingPointError(f"NaN or Inf in {name} of {reader.where}: the checkpoint is damaged")
    return model


class LayerStream:
    """Moves decoder layers' weights between a checkpoint, memory and (optionally) an output checkpoint."""

    def __init__(self, model: nn.Module, reader: CheckpointReader, writer: CheckpointWriter | None = None,
                 device: str = "cpu"):
        self.model, self.reader, self.writer, self.device = model, reader, writer, device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.prefix = adapter_for(model).layers
        self.layers = len(decoder_layers(model))
        self.written: set[int] = set()
        # The next layer is read in the background while this one computes (passes go in layer order).
        self._next: tuple[int, Future] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="structprune-reader")

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        prefix = f"{self.prefix}.{index}."
        return {k[len(prefix):]: v for k, v in
                self.reader.read(self.reader.names(prefix), self.dtype, self.device).items()}

    def load(self, index: int) -> nn.Module:
        """Read layer `index`'s weights from the checkpoint into the skeleton, and start reading the next."""
        layer = decoder_layers(self.model)[index]
        upcoming, self._next = self._next, None
        state = upcoming[1].result() if upcoming is not None and upcoming[0] == index else self._read(index)
        if index + 1 < self.layers:
            self._next = (index + 1, self._executor.submit(self._read, index + 1))
        try:
            layer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise ValueError(f"{self.reader.where}: layer {index}'s tensors do not match its config "
                             f"({str(error).splitlines()[0]}): the checkpoint is damaged or mislabelled") from None
        bad = [k for k, v in state.items() if not all_finite(v)]
        if bad:
            raise FloatingPointError(f"NaN or Inf in layer {index} ({', '.join(bad[:3])}) of {self.reader.where}: "
                                     "the checkpoint is damaged, or overflows in this dtype (load in float32)")
        return layer

    def release(self, index: int, write: bool) -> None:
        """Write layer `index` (if asked) as its shard, then drop its weights to the meta device."""
        layer = decoder_layers(self.model)[index]
        if write:
            tensors = {f"{self.prefix}.{index}.{k}": v for k, v in layer.state_dict().items()}
            self.writer.write(shard_name(index + 1, self.layers + 1), tensors)
            self.written.add(index)
        layer.to("meta")

    @contextmanager
    def layer(self, index: int, write: bool = False) -> Iterator[nn.Module]:
        """Layer `index` with its weights in memory for the body; written (write=True, unless the body
        failed) and dropped on exit."""
        if write and self.writer is None:
            raise ValueError("this stream has no output checkpoint to write layers to")
        layer = self.load(index)
        failed = True
        try:
            yield layer
            failed = False
        finally:
            self.release(index, write and not failed)

    def write_rest(self) -> None:
        """The shard of everything outside the decoder layers (embeddings, final norm, head), once every
        layer is written."""
        missing = sorted(set(range(self.layers)) - self.written)
        if missing:
            raise RuntimeError(f"layers {missing[:5]} were never written: the streamed pass did not finish")
        layers = self.prefix + "."
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        rest = {k: v for k, v in self.model.state_dict().items()
                if not k.startswith(layers) and not (tied and k == "lm_head.weight")}
        self.writer.write(shard_name(self.layers + 1, self.layers + 1), rest)


def available_memory() -> int:
    """Bytes of memory the system can give this process now (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.virtual_memory().available


def should_stream(where: str | Path, dtype: torch.dtype, margin: float = 0.8) -> tuple[bool, str]:
    """Whether a local checkpoint would not fit in memory at `dtype` (more than `margin` of what is
    available), and the sentence that says so."""
    need = CheckpointReader(where).bytes_at(dtype)
    have = available_memory()
    dtype_name = str(dtype).removeprefix("torch.")
    fits = need <= margin * have
    return (not fits, f"the model needs {need / 2**30:.1f} GiB in {dtype_name} and {have / 2**30:.1f} GiB of memory "
                      f"are available: {'loading it whole' if fits else 'streaming, one decoder layer resident'}")


def open_stream(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                output: str | Path | None = None, overwrite: bool = False) -> LayerStream:
    """A skeleton of the checkpoint in `model_dir` and its layer stream (writing to `output`, if given)."""
    reader = CheckpointReader(model_dir)
    writer = CheckpointWriter(output, overwrite, expected_bytes=reader.bytes_at(dtype)) if output else None
    try:
        model = skeleton(reader, dtype, device)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return LayerStream(model, reader, writer, device)


def local_checkpoint(spec: str) -> Path:
    """The folder of a model spec that names local safetensors weights (a directory, embedded, tiny)."""
    from .models import resolve_model_spec

    kind, where = resolve_model_spec(spec)
    if kind == "hub":
        raise ValueError(f"{spec!r} is a hub model: streaming reads local safetensors shards. Download it once "
                         "(`huggingface-cli download ...`) and pass the folder")
    return Path(where)


@torch.no_grad()
def streamed_perplexity_of_ids(stream: LayerStream, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                               batch_size: int = 8, max_activation_bytes: int = 2**30) -> dict:
    """`evaluate.perplexity_of_ids` of the stream's model, layer by layer over all windows: the windows'
    hidden states stay resident (in groups of at most `max_activation_bytes`; each group reads the weights
    once), one layer's weights at a time. The same batches as in memory, so the same numbers."""
    model = stream.model
    chunks = check_windows(model, ids, seqlen, max_windows, batch_size)
    windows = chunks.shape[0]
    batch_size = max(1, min(batch_size, BATCH_TOKENS // seqlen))
    hidden = model.config.hidden_size
    element = model.get_input_embeddings().weight.element_size()
    per_group = max(batch_size, (max_activation_bytes // (seqlen * hidden * element)) // batch_size * batch_size)
    window_nll, total_nll, total_tokens = [], 0.0, 0
    start = time.perf_counter()
    for first in range(0, windows, per_group):
        group = chunks[first:first + per_group]
        inputs = capture_layer_inputs(model, group, batch_size)
        returns_tuple = False
        for index in progress(range(stream.layers), f"perplexity, streamed (windows {first + 1}-"
                              f"{first + len(group)} of {windows})", unit="layer"):
            with stream.layer(index) as layer:
                outputs = []
                for hidden_states, kwargs in inputs:
                    out = layer(hidden_states, **kwargs)
                    returns_tuple = isinstance(out, tuple)
                    outputs.append(out[0] if returns_tuple else out)
            inputs = [(out, kwargs) for out, (_, kwargs) in zip(outputs, inputs, strict=True)]
        for batch, (final, _) in zip(group.split(batch_size), inputs, strict=True):
            with stand_in_layers(model, final, returns_tuple):
                logits = model(batch.to(final.device), use_cache=False).logits.float()
            per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                          batch[:, 1:].reshape(-1).to(logits.device), reduction="none")
            total_nll += per_token.sum().item()
            total_tokens += batch[:, 1:].numel()
            window_nll += per_token.double().view(len(batch), -1).mean(1).tolist()
    return summarise_windows(window_nll, total_nll, total_tokens, seqlen, time.perf_counter() - start)


class _StandIn(nn.Module):
    """A stand-in decoder layer: passes its input through, or returns a stored output (the last layer)."""

    def __init__(self, original: nn.Module, output: torch.Tensor | None, returns_tuple: bool):
        super().__init__()
        self.output, self.returns_tuple = output, returns_tuple
        for name in ("attention_type", "layer_idx"):  # attributes a family's model loop reads from its layers
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.output is None else self.output
        return (out,) if self.returns_tuple else out


@contextmanager
def stand_in_layers(model: nn.Module, final: torch.Tensor, returns_tuple: bool) -> Iterator[None]:
    """The model with its decoder layers replaced by stand-ins whose last returns `final`: the model's own
    forward then applies the final norm and head to it (whatever the family calls them)."""
    adapter = adapter_for(model)
    layers = decoder_layers(model)
    stand_ins = nn.ModuleList(_StandIn(layer, final if i == len(layers) - 1 else None, returns_tuple)
                              for i, layer in enumerate(layers))
    model.set_submodule(adapter.layers, stand_ins)
    try:
        yield
    finally:
        model.set_submodule(adapter.layers, layers)


def streamed_perplexity(model_dir: str | Path, tokenizer, dataset: str = "wikitext2", split: str = "test",
                        seqlen: int = 128, max_windows: int | None = None, batch_size: int = 8,
                        dtype: torch.dtype = torch.float32, device: str = "cpu", data_path=None) -> dict:
    """`evaluate.perplexity` of the checkpoint in `model_dir` without loading it whole (one layer resident)."""
    stream = open_stream(model_dir, dtype, device)
    ids = evaluation_ids(tokenizer, dataset, split, data_path)
    result = streamed_perplexity_of_ids(stream, ids, seqlen, max_windows, batch_size)
    result["streamed"] = True
    return with_protocol(result, dataset, split, max_windows, ids)
