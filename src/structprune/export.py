"""Export a (pruned) model to a GGUF file that llama.cpp runs, with per-layer widths.

llama.cpp's `deci` architecture reads per-layer arrays of query heads, KV heads and MLP widths, and optional
biases on every linear, so a non-uniform pruned LLaMA-family model maps onto it one tensor for one tensor:

    token_embd, output_norm, output            embeddings, final norm, LM head (written even when tied)
    blk.i.attn_norm / ffn_norm                 the two RMSNorms
    blk.i.attn_q / attn_k                      rows permuted per layer with that layer's own head counts
                                               (llama.cpp rotates interleaved pairs; HF rotates halves)
    blk.i.attn_v / attn_output                 as they are
    blk.i.ffn_gate / ffn_up / ffn_down         as they are; o_proj / down_proj compensation biases as .bias

Two shapes the engine treats differently from PyTorch are rewritten into exactly equivalent ones:
- a layer with no MLP channel: llama.cpp skips the rest of such a layer (its attention's residual update
  too), so it gets one channel whose gate, up and down weights are zero (silu(0) * 0 = 0), plus its bias;
- a layer with no attention head: llama.cpp skips attention (and its o_proj bias) when the head count is 0,
  and reads the key length from layer 0, so layer 0, and any layer whose o_proj carries a compensation
  bias, gets one query and one KV head of zero weights (the values are zero, so the output is the bias).
Narrower value heads (FASP-style value-channel cuts) have no form in this graph: one head size serves q, k
and v. Such a model is refused with the option that avoids it.

The tokenizer (a byte-level BPE: tokens, types, merges, special ids) goes into the file, which therefore
runs on its own. The file is written beside its destination and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .architectures import adapter_for, attention_of, decoder_layers, head_dim, mlp_of, model_type_of
from .checkpoint import safetensors_header, weight_files
from .staging import remove_orphans, temporary_file, tidy

GGUF_DTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 quantises rows in blocks of 32 values; other row lengths are written as f16

# llama.cpp's name for a tokenizer's pre-tokenisation rules, by the digest of its vocabulary and merges (the
# engine splits text with these rules; token-id prompts do not depend on them). Unknown tokenizers get
# "default", with a warning.
PRE_TOKENIZERS = {
    "8eb670559d3327fe": "smollm",  # SmolLM / SmolLM2
}


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of q or k (or their bias) from HF's rotate-half order to llama.cpp's interleaved pairs, per head."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2)
            .reshape(weight.shape))


def vocabulary_digest(tokenizer) -> str:
    """A short digest of a tokenizer's vocabulary and merges (what PRE_TOKENIZERS is keyed by)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    return hashlib.sha256(json.dumps([vocab, merges]).encode()).hexdigest()[:16]


GGUF_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 weights and an f16 scale


def export_size(where: Path, dtype: str) -> int:
    """An upper bound on the GGUF file of the checkpoint in `where` (its tensors' elements, from the safetensors
    headers, at `dtype`; norms and unquantisable tensors stay f32, so 4 bytes for each of them), plus 64 MiB for
    the tokenizer and metadata."""
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    elements = [int(np.prod(entry["shape"])) for name in weight_files(where)
                for entry in safetensors_header(where / name).values()]
    small = sum(n for n in elements if n < 1 << 16)
    return int((sum(elements) - small) * GGUF_BYTES_PER_WEIGHT[dtype] + 4 * small) + (64 << 20)


def _check_exportable(model) -> None:
    family = model_type_of(model.config)
    adapter = adapter_for(model)
    if adapter.family != "llama" or adapter.q_norm is not None:
        raise NotImplementedError(f"GGUF export writes llama.cpp's `deci` graph, which holds LLaMA-family models "
                                  f"(llama, mistral, qwen2); this model is {family!r}")
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"GGUF export: the model's rope scaling ({rope}) is not written to the deci graph; "
                                  "only models with plain rotary embeddings export")
    for shape in getattr(model.config, "layer_shapes", None) or []:
        if shape["num_key_value_heads"] and shape["value_head_dim"] != head_dim(model.config):
            raise ValueError(f"this model has value heads of {shape['value_head_dim']} channels against "
                             f"{head_dim(model.config)} for queries and keys (FASP-style value-channel cuts): "
                             "llama.cpp's graph uses one head size for q, k and v, so it cannot hold them. Prune "
                             "with attention_unit='kv_group' (or FASP with attention=False) to export")


def _tokenizer_metadata(writer, tokenizer, vocab_size: int) -> None:
    import warnings

    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"].get("type") != "BPE":
        raise NotImplementedError(f"GGUF export writes byte-level BPE tokenizers; this one is {state['model'].get('type')}")
    vocab = state["model"]["vocab"]
    special = {token["id"] for token in state.get("added_tokens", []) if token.get("special")}
    by_id = {index: token for token, index in vocab.items()}
    for token in state.get("added_tokens", []):
        by_id[token["id"]] = token["content"]
    tokens, types = [], []
    for index in range(vocab_size):
        if index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL)
        else:  # embedding rows beyond the tokenizer's vocabulary
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    digest = vocabulary_digest(tokenizer)
    pre = PRE_TOKENIZERS.get(digest)
    if pre is None:
        warnings.warn(f"GGUF export: llama.cpp's pre-tokenizer for this vocabulary (digest {digest}) is unknown; "
                      "writing 'default' (text prompts may split differently; token-id prompts are exact)",
                      stacklevel=3)
        pre = "default"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in state["model"].get("merges", [])])
    for name, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                        ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{name}_token_id")(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))


def layer_tensors(model, index: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One decoder layer as llama.cpp's tensors ({name: float32 tensor}) and its widths (heads, KV heads,
    MLP channels), with the two rewrites of the module docstring applied."""
    adapter, config = adapter_for(model), model.config
    d = head_dim(config)
    layer = decoder_layers(model)[index]
    attn, mlp = attention_of(layer, adapter), mlp_of(layer, adapter)
    o = attn.get_submodule(adapter.o)
    gate, up, down = (mlp.get_submodule(n) for n in (adapter.gate, adapter.up, adapter.down))
    hidden = config.hidden_size
    tensors = {"attn_norm.weight": layer.input_layernorm.weight, "ffn_norm.weight": layer.post_attention_layernorm.weight}
    q = getattr(attn, adapter.q, None)
    kv_heads = q is not None and attn.get_submodule(adapter.k).out_features // d
    heads = kv_heads and q.out_features // d
    if heads:
        k, v = attn.get_submodule(adapter.k), attn.get_submodule(adapter.v)
        tensors.update({"attn_q.weight": _permute(q.weight, heads), "attn_k.weight": _permute(k.weight, kv_heads),
                        "attn_v.weight": v.weight, "attn_output.weight": o.weight})
        for name, linear, count in (("attn_q", q, heads), ("attn_k", k, kv_heads), ("attn_v", v, None)):
            if linear.bias is not None:
                tensors[f"{name}.bias"] = _permute(linear.bias, count) if count else linear.bias
    elif index == 0 or o.bias is not None:  # one head of zeros: exact, and what the engine needs to run it
        heads = kv_heads = 1
        zeros = torch.zeros(d, hidden)
        tensors.update({"attn_q.weight": zeros, "attn_k.weight": zeros, "attn_v.weight": zeros,
                        "attn_output.weight": torch.zeros(hidden, d)})
    else:  # attention skipped; the engine reads no attention norm for such a layer
        heads = kv_heads = 0
        del tensors["attn_norm.weight"]
    if heads and o.bias is not None:
        tensors["attn_output.bias"] = o.bias
    channels = down.in_features
    if channels:
        tensors.update({"ffn_gate.weight": gate.weight, "ffn_up.weight": up.weight, "ffn_down.weight": down.weight})
        for name, linear in (("ffn_gate", gate), ("ffn_up", up)):
            if linear.bias is not None:
                tensors[f"{name}.bias"] = linear.bias
    else:  # one channel of zeros: llama.cpp skips the rest of a layer whose MLP width is 0
        channels = 1
        tensors.update({"ffn_gate.weight": torch.zeros(1, hidden), "ffn_up.weight": torch.zeros(1, hidden),
                        "ffn_down.weight": torch.zeros(hidden, 1)})
    if down.bias is not None:
        tensors["ffn_down.bias"] = down.bias
    widths = {"heads": int(heads), "kv_heads": int(kv_heads), "channels": int(channels)}
    return {name: t.detach().float().cpu() for name, t in tensors.items()}, widths


def _add(writer, name: str, tensor: torch.Tensor, dtype: str) -> str:
    """Add one tensor in `dtype` (norms, biases and 1-D tensors stay f32; q8_0 needs row lengths that are multiples
    of 32, other rows fall back to f16); the type written."""
    import gguf

    data = tensor.numpy()
    if dtype == "f32" or data.ndim < 2:
        writer.add_tensor(name, data.astype(np.float32))
        return "f32"
    if dtype == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        quantised = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        return "q8_0"
    writer.add_tensor(name, data.astype(np.float16))
    return "f16"


def export_gguf(model, tokenizer, output: str | Path, dtype: str = "f32") -> dict:
    """Write `model` (dense or pruned, LLaMA family) and its tokenizer to the GGUF file `output`, atomically;
    returns a summary: path, per-layer widths, how many tensors of each type were written."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    output = Path(output)
    if output.suffix != ".gguf":
        raise ValueError(f"the output file must end in .gguf, got {output}")
    _check_exportable(model)
    config = model.config
    layers = decoder_layers(model)
    per_layer = [layer_tensors(model, i) for i in range(len(layers))]
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(output.parent)  # what a killed export left behind
    tmp = str(temporary_file(output))
    written: dict[str, int] = {}
    try:
        writer = gguf.GGUFWriter(tmp, "deci")
        writer.add_name(getattr(config, "_name_or_path", "") or "structprune model")
        writer.add_block_count(len(layers))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length([w["channels"] for _, w in per_layer])
        writer.add_head_count([w["heads"] for _, w in per_layer])
        writer.add_head_count_kv([w["kv_heads"] for _, w in per_layer])
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
        writer.add_rope_dimension_count(head_dim(config))
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                        or config.rope_parameters["rope_theta"]))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        vocab_size = model.get_input_embeddings().weight.shape[0]
        writer.add_vocab_size(vocab_size)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        _tokenizer_metadata(writer, tokenizer, vocab_size)
        tensors = {"token_embd.weight": model.get_input_embeddings().weight,
                   "output_norm.weight": model.model.norm.weight,
                   "output.weight": model.get_output_embeddings().weight}
        for index, (layer, _) in enumerate(per_layer):
            tensors.update({f"blk.{index}.{name}": t for name, t in layer.items()})
        for name, tensor in tensors.items():
            kind = _add(writer, name, tensor.detach().float().cpu(), dtype)
            written[kind] = written.get(kind, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        tidy(output.parent)
    return {"path": str(output), "dtype": dtype, "tensor_types": written,
            "layers": [w for _, w in per_layer]}
