"""Run a GGUF file in llama.cpp (the `xllamacpp` wheel), always in a child process.

A malformed file can abort the host process inside the engine, so the parent only writes a job, starts
`python -m structprune.llamacpp JOB`, and reads the answers back from a file; a crash becomes a Python
error with the engine's last log lines. The engine's API is llama-server's completion call: token-id
prompts, greedy decoding, the top-K log-probabilities of every generated step, and timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .architectures import count_parameters


class EngineError(RuntimeError):
    """llama.cpp could not load or run a file (the child process failed)."""


def run_completions(gguf_path: str | Path, requests: list[dict], threads: int = 2, n_ctx: int = 2048,
                    kv_cache: str = "f16", timeout: float = 1800) -> list[dict]:
    """Answer llama-server completion `requests` (dicts: prompt token ids, n_predict, n_probs, ...) with the
    model in `gguf_path`, in a child process; the responses, in order. kv_cache: the engine's key/value cache
    type, f16 (its default) or f32."""
    if kv_cache not in ("f16", "f32"):
        raise ValueError(f"kv_cache must be f16 or f32, got {kv_cache!r}")
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path} does not exist: export a model first (structprune export ... --format gguf)")
    with tempfile.TemporaryDirectory(prefix="structprune-llamacpp-") as folder:
        job, answers = Path(folder) / "job.json", Path(folder) / "answers.json"
        job.write_text(json.dumps({"model": str(gguf_path.resolve()), "threads": threads, "n_ctx": n_ctx,
                                   "kv_cache": kv_cache, "requests": requests, "answers": str(answers)}))
        # OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads slow generation tenfold on a loaded machine.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        child = subprocess.run([sys.executable, "-m", "structprune.llamacpp", str(job)], env=env,
                               capture_output=True, text=True, timeout=timeout)
        if child.returncode != 0 or not answers.is_file():
            tail = "\n".join((child.stderr + child.stdout).strip().splitlines()[-15:])
            raise EngineError(f"llama.cpp could not run {gguf_path} (exit status {child.returncode}); its last "
                               f"lines:\n{tail}")
        return json.loads(answers.read_text())


def parity(model, gguf_path: str | Path, sequences: list[list[int]], first: int = 8, top_k: int = 10,
           threads: int = 2, near_tie: float = 1e-3, kv_cache: str = "f32") -> dict:
    """How closely llama.cpp's run of `gguf_path` reproduces `model`'s next-token distribution.

    At every position t >= `first` of each token sequence, the engine reads the first t tokens and gives its
    greedy next token and the log-probabilities of its top `top_k` (one request per position, so no step
    depends on an earlier choice); PyTorch reads each whole sequence once, in float64 log-softmax. Per position:
    does PyTorch's most likely token equal the engine's choice (positions where PyTorch's top two are within
    `near_tie` nats are counted apart: an engine error of half that gap may flip them, and either is right),
    and the largest difference of the top-k log-probabilities. The engine withholds a token that ends inside a UTF-8 character: such positions are
    counted as `withheld` and compared no further. kv_cache: f32 (with the plain attention path) compares the
    exported weights alone, to 2e-5-3e-4 nats; the engine's defaults (f16 cache, flash attention rounding
    queries to f16) add their own rounding, about 0.003-0.03 nats."""
    import torch

    requests = [{"prompt": list(map(int, sequence[:t])), "n_predict": 1, "n_probs": top_k, "cache_prompt": True}
                for sequence in sequences for t in range(first, len(sequence) + 1)]
    answers = iter(run_completions(gguf_path, requests, threads=threads, n_ctx=max(map(len, sequences)) + 2,
                                   kv_cache=kv_cache))
    device = next(model.parameters()).device
    agree = ties = positions = withheld = 0
    largest = 0.0
    for sequence in sequences:
        with torch.no_grad():
            logits = model(torch.tensor([list(sequence)], device=device), use_cache=False).logits[0]
        logprobs = torch.log_softmax(logits.double(), -1).cpu()
        for t in range(first, len(sequence) + 1):
            steps = (next(answers)["choices"][0].get("logprobs") or {}).get("content")
            if not steps:
                withheld += 1
                continue
            ours, step = logprobs[t - 1], steps[0]
            top2 = ours.topk(2).values
            positions += 1
            if (top2[0] - top2[1]).item() < near_tie:
                ties += 1
            else:
                agree += int(ours.argmax().item() == step["id"])
            largest = max(largest, max(abs(t["logprob"] - ours[t["id"]].item()) for t in step["top_logprobs"]))
    return {"positions": positions, "withheld": withheld, "near_ties": ties,
            "top1_agreement": agree / max(positions - ties, 1), "max_logprob_difference": largest, "top_k": top_k,
            "kv_cache": kv_cache}


def engine_speed(gguf_path: str | Path, prompt_tokens: int = 512, new_tokens: int = 128, threads: int = 2,
                 repeats: int = 3, seed: int = 0) -> dict:
    """llama.cpp's prefill and decode throughput of a GGUF file at batch 1, with the engine's defaults (f16 KV
    cache, flash attention as it chooses): one warm-up request, then `repeats` requests of `prompt_tokens`
    random token ids and `new_tokens` greedy steps; medians, with min and max, of the engine's own timings."""
    import statistics

    import torch

    vocab = _vocab_size(gguf_path)
    prompt = torch.randint(3, vocab, (prompt_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()
    request = {"prompt": prompt, "n_predict": new_tokens, "ignore_eos": True}
    answers = run_completions(gguf_path, [request] * (repeats + 1), threads=threads,
                              n_ctx=prompt_tokens + new_tokens + 8)[1:]
    result = {}
    for name, key in (("prefill", "prompt_per_second"), ("decode", "predicted_per_second")):
        values = [answer["timings"][key] for answer in answers]
        result[f"{name}_tokens_per_second"] = statistics.median(values)
        result[f"{name}_range"] = [min(values), max(values)]
    result["protocol"] = (f"llama.cpp (xllamacpp) batch 1: prefill {prompt_tokens} tokens, decode {new_tokens} new "
                          f"tokens, {threads} threads, f16 KV cache; median of {repeats} after a warm-up")
    return result


def model_engine_speed(model, tokenizer, dtype: str = "f32", prompt_tokens: int = 512, new_tokens: int = 128,
                       threads: int = 2, repeats: int = 3) -> dict:
    """`engine_speed` of a PyTorch model: exported to a temporary GGUF file in `dtype` (`export.export_gguf`),
    timed, the file removed; the result also names the tensor types written and the parameter count."""
    import tempfile

    from .export import export_gguf

    with tempfile.TemporaryDirectory(prefix="structprune-gguf-") as folder:
        exported = export_gguf(model, tokenizer, Path(folder) / "model.gguf", dtype)
        result = engine_speed(exported["path"], prompt_tokens, new_tokens, threads, repeats)
    return {**result, "tensor_types": exported["tensor_types"], "params_after": count_parameters(model)}


def _vocab_size(gguf_path: str | Path) -> int:
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    return len(reader.fields["tokenizer.ggml.tokens"].data)


def _serve(job: dict) -> list[dict]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = job["model"]
    params.n_ctx = job["n_ctx"]
    params.n_parallel = 1
    params.n_batch = params.n_ubatch = min(512, job["n_ctx"])
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = job["threads"]
    params.warmup = False
    cache_type = getattr(xllamacpp.ggml_type, f"GGML_TYPE_{job['kv_cache'].upper()}")
    params.cache_type_k = params.cache_type_v = cache_type
    if job["kv_cache"] == "f32":  # the CPU flash-attention kernel rounds queries to f16: use the plain path
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    server = xllamacpp.Server(params)
    answers = []
    for request in job["requests"]:
        answer = server.handle_completions({"temperature": 0, "cache_prompt": False, **request})
        if "error" in answer:
            raise RuntimeError(f"llama.cpp refused a request: {answer['error']}")
        answers.append(answer)
    return answers


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    results = _serve(spec)
    Path(spec["answers"]).write_text(json.dumps(results))
