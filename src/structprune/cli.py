"""Command line: `structprune evaluate | prune | export | methods` (also `python -m structprune`).

Model loading (`models`, which imports transformers' modeling code, about 2 s) is imported inside the commands
that load a model, so `structprune --help` and refused arguments answer without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from .allocate import ALLOCATIONS
from .api import check_finite_weights, prune, prune_streamed
from .checkpoint import CHECKPOINT_TOKEN, check_local_folder, check_output, save_pruned
from .compensate import COMPENSATIONS
from .composition import COMPOSITION_FIELDS, PASS_OPTION_HELP, Composition, compose
from .evaluate import evaluation_ids, perplexity, zero_shot
from .export import export_gguf, export_size
from .llamacpp import EngineError, model_engine_speed, parity
from .methods import METHODS
from .records import environment, write_record
from .recovery import lora_recover
from .scores import SCORE_ALIASES, SCORES
from .speed import speed
from .staging import check_file_output, check_free_space
from .streaming import should_stream, streamed_perplexity


def _parse_value(text: str):
    """key=value option values: JSON literals (numbers, true/false/null), else the string itself."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--option takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = _parse_value(value.strip())
    return options


def _perplexities(model, tokenizer, datasets: str | None, seqlen: int, max_windows: int | None,
                  batch_size: int) -> dict:
    results = {}
    for dataset in filter(None, (datasets or "").split(",")):
        results[f"perplexity_{dataset}"] = perplexity(model, tokenizer, dataset, "test", seqlen, max_windows, batch_size)
    return results


def cmd_evaluate(args) -> int:
    from .models import load_model

    if args.output:
        check_file_output(Path(args.output), args.overwrite)
    if args.tasks is not None and not [t for t in args.tasks.split(",") if t.strip()]:
        raise ValueError(f"--tasks {args.tasks!r} names no task: pass names separated by commas, e.g. "
                         "--tasks boolq,piqa (`structprune evaluate --help` lists them)")
    if not (args.perplexity or args.tasks or args.speed):
        raise ValueError("nothing to evaluate: pass --perplexity wikitext2 (or ptb, c4), --tasks boolq,... "
                         "and/or --speed")
    if args.engine != "pytorch" and not args.speed:
        raise ValueError(f"--engine {args.engine} chooses where --speed is timed: add --speed, or drop --engine")
    if streaming_chosen(args):
        return evaluate_streamed(args)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - start
    check_finite_weights(model)
    metrics = _perplexities(model, tokenizer, args.perplexity, args.seqlen, args.max_windows, args.batch_size)
    if args.tasks:
        metrics["zero_shot"] = zero_shot(model, tokenizer, args.tasks, args.limit, args.batch_size, args.task_source)
    if args.speed and args.engine == "llama.cpp":
        metrics["engine_speed"] = model_engine_speed(model, tokenizer, args.gguf_dtype, threads=args.threads or 2,
                                                     repeats=args.repeats)
    elif args.speed:
        metrics["speed"] = speed(model, repeats=args.repeats, threads=args.threads)
    config = {"command": "evaluate", "model": model.structprune_source, "perplexity": args.perplexity,
              "seqlen": args.seqlen, "max_windows": args.max_windows, "tasks": args.tasks, "limit": args.limit,
              "task_source": args.task_source, "dtype": str(model.dtype)}
    if args.speed:
        config.update(speed=True, engine=args.engine, repeats=args.repeats,
                      threads=metrics["speed"]["threads"] if "speed" in metrics else args.threads or 2)
        if args.engine == "llama.cpp":
            config["gguf_dtype"] = args.gguf_dtype
    path = write_record("evaluate", config, metrics, {"load_seconds": load_seconds},
                        path=Path(args.output) if args.output else None)
    for name, result in metrics.items():
        if name.startswith("perplexity_"):
            print(f"{name}: {result['perplexity']:.3f}  ({result['protocol']}, {result['tokens']} tokens)")
    if "zero_shot" in metrics:
        for task, r in metrics["zero_shot"]["tasks"].items():
            note = "  (approximation)" if r["approximation"] else ""
            print(f"{task}: {r['paper_metric']} {r['score']:.4f} on {r['documents']} documents, "
                  f"{r['task']} v{r['version']}{note}")
        print(f"average ({metrics['zero_shot']['metric_convention']}): {metrics['zero_shot']['average']:.4f}")
    if "engine_speed" in metrics:
        result = metrics["engine_speed"]
        print(f"llama.cpp prefill {result['prefill_tokens_per_second']:.1f} tokens/s, decode "
              f"{result['decode_tokens_per_second']:.1f} tokens/s ({result['protocol']})")
    if "speed" in metrics:
        result = metrics["speed"]
        for row in result["prefill"]:
            print(f"prefill batch {row['batch']} x {row['tokens']}: {row['tokens_per_second']:.0f} tokens/s")
        for row in result["decode"]:
            print(f"decode batch {row['batch']}: {row['tokens_per_second']:.1f} tokens/s, "
                  f"{row['latency_per_token_ms']:.1f} ms per step")
        print(f"parameters {result['parameters']:,}; MACs per token {result['macs_per_token']['total']:,.0f}; "
              f"memory {result['memory']}; {result['protocol']}")
    print(f"record: {path}")
    return 0


def evaluate_streamed(args) -> int:
    """`evaluate --perplexity` of a local model one decoder layer at a time (larger than memory)."""
    from .models import describe_model, local_tokenizer, resolve_device_dtype, resolve_model_spec

    if args.tasks or args.speed or not args.perplexity:
        raise ValueError("a streamed evaluation (--stream, or a model larger than memory) measures perplexity only: "
                         "pass --perplexity, and evaluate --tasks / --speed on a model that fits")
    if args.device == "auto":
        raise ValueError("--stream keeps one layer on one device: use --device cpu or cuda")
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    kind, where = resolve_model_spec(args.model)
    metrics = _streamed_perplexities(where, local_tokenizer(Path(where)), args.perplexity, args.seqlen,
                                     args.max_windows, args.batch_size, dtype, device)
    config = {"command": "evaluate", "model": describe_model(args.model, kind, where), "perplexity": args.perplexity,
              "seqlen": args.seqlen, "max_windows": args.max_windows, "tasks": None, "limit": None,
              "task_source": args.task_source, "dtype": str(dtype), "streamed": True}
    path = write_record("evaluate", config, metrics, path=Path(args.output) if args.output else None)
    for name, result in metrics.items():
        print(f"{name}: {result['perplexity']:.3f}  ({result['protocol']}, {result['tokens']} tokens, streamed)")
    print(f"record: {path}")
    return 0


def cmd_export(args) -> int:
    from .models import load_model, resolve_model_spec

    output = Path(args.output)
    if output.suffix != ".gguf":
        raise ValueError(f"the output file must end in .gguf, got {output}")
    check_file_output(output, args.overwrite)  # before loading: a bad destination fails in a second
    kind, where = resolve_model_spec(args.checkpoint)
    if kind == "local":
        check_local_folder(Path(where))  # complete weights; a pruned checkpoint's config and sidecar unedited
    if kind != "hub":  # the tensors are on this machine: room for the file is known before loading
        check_free_space(output, export_size(Path(where), args.dtype))
    model, tokenizer = load_model(args.checkpoint, dtype="float32", device="cpu")
    check_finite_weights(model)
    summary = export_gguf(model, tokenizer, output, args.dtype)
    heads = [layer["heads"] for layer in summary["layers"]]
    channels = [layer["channels"] for layer in summary["layers"]]
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {args.dtype}; tensors {summary['tensor_types']})")
    print(f"query heads per layer {heads}; MLP channels per layer {channels}")
    if args.check:
        ids = evaluation_ids(tokenizer, "wikitext2", "test")
        texts = [ids[start:start + 72].tolist() for start in range(0, 4 * 997, 997)]
        try:
            result = parity(model, output, texts, first=9)
        except EngineError:
            raise
        except Exception as error:  # an answer the comparison cannot read: said, never a traceback
            raise EngineError(f"--check could not compare {output} with PyTorch ({type(error).__name__}: {error}); "
                              "the file was written; run it in llama.cpp yourself to see what it computes") from None
        print(f"parity with PyTorch over {result['positions']} WikiText-2 positions (f32 KV cache): top-1 agreement "
              f"{result['top1_agreement']:.4f} ({result['near_ties']} near-ties apart), largest top-{result['top_k']} "
              f"log-prob difference {result['max_logprob_difference']:.2e}")
    return 0


def _method_or_composition(args, options: dict):
    """A paper method by --method, or a composition of parts by --score / --allocation / --compensation."""
    parts = {k: v for k, v in (("score", args.score), ("allocation", args.allocation),
                               ("compensation", args.compensation)) if v}
    if args.method and parts:
        raise ValueError(f"--method {args.method} names a paper method's parts: drop --{' --'.join(parts)}, or "
                         "drop --method to compose parts")
    if args.method:
        return args.method
    if not parts:
        raise ValueError("name a paper method (--method flap) or parts (--score wifv --allocation cfsp "
                         "--compensation least_squares); `structprune methods` lists both")

    return compose(**parts, **options)


def streaming_chosen(args) -> bool:
    """--stream, or a local model that would not fit in memory (said on stderr)."""
    from .models import resolve_device_dtype, resolve_model_spec

    if args.stream:
        return True
    if args.device == "auto":
        return False  # accelerate's device map places the model itself
    kind, where = resolve_model_spec(args.model)
    if kind == "hub":
        return False
    too_big, sentence = should_stream(where, resolve_device_dtype(args.device, args.dtype)[1])
    if too_big:
        print(f"structprune: {sentence} (--stream)", file=sys.stderr)
    return too_big


def _streamed_perplexities(where, tokenizer, datasets: str | None, seqlen: int, max_windows: int | None,
                           batch_size: int, dtype, device: str) -> dict:
    return {f"perplexity_{dataset}": streamed_perplexity(where, tokenizer, dataset, "test", seqlen, max_windows,
                                                         batch_size, dtype, device)
            for dataset in filter(None, (datasets or "").split(","))}


def cmd_prune(args) -> int:
    from .models import describe_model, load_model, local_tokenizer, resolve_device_dtype, resolve_model_spec

    options = _parse_options(args.option)
    if "target_params" in options:
        raise ValueError("pass the share of the model to remove as --target-params F (every method), not as an option")
    if (args.ratio is None) == (args.target_params is None):
        raise ValueError("give --ratio (the method's own ratio) or --target-params (the fraction of the whole "
                         "model's parameters to remove), one of them")
    method = _method_or_composition(args, options)
    if not isinstance(method, str):
        options = {}  # routed into the composition
    output = Path(args.output)
    check_output(output, args.overwrite)  # before any work: a bad destination fails in a second, not after pruning
    streamed = streaming_chosen(args)
    if streamed and args.recover != "none":
        raise ValueError("--recover lora trains the whole model at once, so it cannot run streamed: prune with "
                         "--stream first, then recover the pruned checkpoint where it fits in memory")
    if streamed and args.device == "auto":
        raise ValueError("--stream keeps one layer on one device: use --device cpu or cuda, or drop --stream to "
                         "spread the model with accelerate (--device auto)")
    model = None
    if streamed:
        device, dtype = resolve_device_dtype(args.device, args.dtype)
        kind, where = resolve_model_spec(args.model)
        source, dtype_name = describe_model(args.model, kind, where), str(dtype)
    else:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        check_free_space(output, model_bytes(model))
        source, dtype_name = model.structprune_source, str(model.dtype)
    # The checkpoint is part of the run: pruning the same config to another folder is another record.
    config = {"command": "prune", "model": source, "method": None, "ratio": args.ratio,
              "target_params": args.target_params, "options": None, "calibration": None, "seed": args.seed,
              "dtype": dtype_name, "recover": args.recover, "output": str(output.resolve())}
    # The checkpoint and its record name one token: a checkpoint whose token no record names was left by a run
    # killed between the two, and the next run replaces it (surgery.is_orphan).
    token = uuid.uuid4().hex
    written: dict = {}

    def write_the_record(result, metrics: dict) -> None:
        """Run while the new checkpoint is in place and a replaced one still kept: a failure restores it."""
        try:
            written["path"] = write_record("prune", config, metrics, {"prune_seconds": result.seconds},
                                           extra={"checkpoint": str(args.output), CHECKPOINT_TOKEN: token})
        except OSError as error:
            kept = " (the checkpoint it was to replace is back in place)" if args.overwrite else ""
            raise OSError(f"the run record could not be written ({error.strerror or error}), so the new checkpoint "
                          f"{output} was not kept{kept}: free space or fix the results folder, then run again") from None

    def streamed_commit(result) -> None:  # the checkpoint is in place: score it layer by layer, then record
        config.update(method=result.method, options=result.options, calibration=result.calibration)
        metrics = {"params_before": result.params_before, "params_after": result.params_after,
                   "peak_memory": result.peak_memory, "plan": result.plan.summary(),
                   **_streamed_perplexities(output, local_tokenizer(Path(where)), args.perplexity, args.eval_seqlen,
                                            args.max_windows, args.batch_size, dtype, device)}
        written["metrics"] = metrics
        write_the_record(result, metrics)

    if streamed:
        config["streamed"] = True
        result = prune_streamed(args.model, output, method, args.ratio, calibration=args.calibration,
                                nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                target_params=args.target_params, dtype=dtype, device=device,
                                overwrite=args.overwrite, provenance={**config, CHECKPOINT_TOKEN: token},
                                before_commit=streamed_commit, **options)
        metrics = written["metrics"]
    else:
        result = prune(model, method, args.ratio, calibration=args.calibration, tokenizer=tokenizer,
                       nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, target_params=args.target_params,
                       **options)
        config.update(method=result.method, options=result.options, calibration=result.calibration)
        recovery = None
        if args.recover == "lora":
            # LoRA needs a seed: the calibration seed when given, else 0 (said in the record's config).
            seed = args.seed if args.seed is not None else 0
            recovery = lora_recover(model, tokenizer, max_steps=args.recover_steps, lr=args.recover_lr, seed=seed)
            config["recovery_options"] = {**recovery["options"], "seed": seed}
        metrics = {"params_before": result.params_before, "params_after": result.params_after,
                   "peak_memory": result.peak_memory, "plan": result.plan.summary()}
        if recovery is not None:
            metrics["recovery_loss_curve"] = recovery["loss_curve"]
        metrics.update(_perplexities(model, tokenizer, args.perplexity, args.eval_seqlen, args.max_windows,
                                     args.batch_size))
        provenance = {**config, "label": result.label, "recovery": recovery, "params_before": result.params_before,
                      "params_after": result.params_after, "plan": result.plan.to_dict(), CHECKPOINT_TOKEN: token}
        provenance.update(environment())
        save_pruned(model, tokenizer, output, provenance, overwrite=args.overwrite,
                    before_commit=lambda: write_the_record(result, metrics))
    path = written["path"]
    print(f"{result.label} ratio {result.ratio:.4g}: {result.params_before:,} -> {result.params_after:,} parameters "
          f"in {result.seconds:.1f} s{' (streamed, one layer resident)' if streamed else ''}")
    for name, value in metrics.items():
        if name.startswith("perplexity_"):
            print(f"{name}: {value['perplexity']:.3f}  ({value['protocol']})")
    print(f"checkpoint: {args.output}\nrecord: {path}")
    return 0


def model_bytes(model) -> int:
    """The weights of `model` in bytes (tied ones once): at most what its pruned checkpoint takes."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def cmd_methods(args) -> int:
    print("Paper methods (--method NAME --option KEY=VALUE):")
    for method in METHODS.values():
        dataset, nsamples, seqlen = method.calibration
        data = f"{dataset}, {nsamples} x {seqlen} tokens" if dataset else "no calibration data"
        parts = method.composition(**method.defaults)
        print(f"  {method.name}  ({method.label}): {method.summary}")
        print(f"      parts: {parts.label}; paper calibration: {data}; source: {method.source}")
        for key, default in method.defaults.items():
            print(f"      --option {key}={json.dumps(default)}    {method.help_for(key)}")
    aliases = {name: alias for alias, name in SCORE_ALIASES.items()}
    for title, flag, registry in (("Scores", "--score", SCORES), ("Allocations", "--allocation", ALLOCATIONS),
                                  ("Compensations", "--compensation", COMPENSATIONS)):
        print(f"\n{title} ({flag} NAME --option KEY=VALUE):")
        for part in registry.values():
            alias = f" (alias {aliases[part.name]})" if part.name in aliases else ""
            print(f"  {part.name}{alias}: {part.summary}")
            for key, default in part.defaults.items():
                print(f"      --option {key}={json.dumps(default)}    {part.option_help.get(key, '')}")
    defaults = Composition()
    print("\nPass options of any composition:")
    for key in COMPOSITION_FIELDS:
        print(f"      --option {key}={json.dumps(getattr(defaults, key))}    {PASS_OPTION_HELP[key]}")
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 and negatives are refused, not read as a default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


MAX_DOCUMENTS = 10**9  # far more than any task holds; beyond it the count is a typo, not a limit


def document_count(text: str) -> int:
    """argparse type: a whole number of documents, 1 to MAX_DOCUMENTS."""
    value = positive_int(text)
    if value > MAX_DOCUMENTS:
        raise argparse.ArgumentTypeError(f"{value} is more documents than any task holds: omit --limit to use "
                                         "every document")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


# Options that only mean something beside another one: (command, option, its default, what it needs, the test).
# Given without what it needs, an option would be ignored in silence, so it is refused; else its default is filled.
DEPENDENT_OPTIONS = (
    ("evaluate", "repeats", 3, "--speed", lambda a: a.speed),
    ("evaluate", "threads", None, "--speed", lambda a: a.speed),
    ("evaluate", "gguf_dtype", "f32", "--engine llama.cpp", lambda a: a.engine == "llama.cpp"),
    ("evaluate", "max_windows", None, "--perplexity", lambda a: a.perplexity),
    ("evaluate", "limit", None, "--tasks", lambda a: a.tasks),
    ("prune", "recover_steps", 100, "--recover lora", lambda a: a.recover == "lora"),
    ("prune", "recover_lr", 1e-4, "--recover lora", lambda a: a.recover == "lora"),
    ("prune", "eval_seqlen", 128, "--perplexity", lambda a: a.perplexity),
    ("prune", "max_windows", None, "--perplexity", lambda a: a.perplexity),
)


def check_dependent_options(args) -> None:
    """Refuse an option given without the one it works with; fill in the defaults of the others."""
    for command, name, default, needs, given in DEPENDENT_OPTIONS:
        if args.command != command:
            continue
        if getattr(args, name) is not None and not given(args):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} only applies with {needs}: add {needs}, or drop {flag}")
        if getattr(args, name) is None:
            setattr(args, name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default="embedded", help="embedded | smollm2-135m | gemma3-270m | tiny-smollm2 (random, for smoke runs) | hub id | local directory")
        p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: float32 on CPU)")
        p.add_argument("--device", default=None, help="cpu | cuda | auto (accelerate device map)")
        p.add_argument("--batch-size", type=positive_int, default=8, help="evaluation batch size (windows)")
        p.add_argument("--max-windows", type=positive_int, default=None, help="evaluate only the first N windows")
        p.add_argument("--stream", action="store_true",
                       help="one decoder layer's weights in memory at a time (a local model larger than memory; "
                            "chosen automatically when the model would not fit)")

    ev = sub.add_parser("evaluate", help="perplexity of a model (dense or pruned checkpoint)")
    model_args(ev)
    ev.add_argument("--perplexity", default=None, help="comma-separated: wikitext2, ptb, c4")
    ev.add_argument("--tasks", default=None,
                    help="zero-shot tasks, comma-separated: boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa")
    ev.add_argument("--limit", type=document_count, default=None,
                    help="zero-shot: the first N documents of each task")
    ev.add_argument("--task-source", default="auto", help="auto | local (data folder) | official (lm-eval's, hub data)")
    ev.add_argument("--seqlen", type=positive_int, default=128, help="window length (papers: 128 FLAP/LLM-Pruner, 2048 Wanda)")
    ev.add_argument("--speed", action="store_true",
                    help="prefill (batch 1/8 x 128/512) and decode (128 new tokens) throughput, memory, MACs")
    ev.add_argument("--engine", default="pytorch", choices=["pytorch", "llama.cpp"],
                    help="speed: in PyTorch, or in llama.cpp (the model exported to GGUF: batch 1, prefill 512, "
                         "decode 128)")
    ev.add_argument("--gguf-dtype", default=None, choices=["f32", "f16", "q8_0"],
                    help="speed in llama.cpp: weight type (default f32)")
    ev.add_argument("--threads", type=positive_int, default=None, help="speed: torch / llama.cpp threads (recorded)")
    ev.add_argument("--repeats", type=positive_int, default=None,
                    help="speed: timed runs per case, median reported (default 3)")
    ev.add_argument("--output", default=None, help="record path (default results/runs/evaluate/<hash>.json)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --output record file")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("prune", help="prune a model and write a pruned checkpoint and a run record")
    model_args(pr)
    pr.add_argument("--method", default=None, help="a paper method (see `structprune methods`)")
    pr.add_argument("--score", default=None, help="compose parts instead: unit score (see `structprune methods`)")
    pr.add_argument("--allocation", default=None, help="compose parts: allocation rule (default uniform)")
    pr.add_argument("--compensation", default=None, help="compose parts: compensation (default none)")
    pr.add_argument("--ratio", type=float, default=None, help="the method's own pruning ratio, in [0, 1)")
    pr.add_argument("--target-params", type=float, default=None,
                    help="instead of --ratio: the fraction of the whole model's parameters to remove, met within one "
                         "MLP channel (a search over the method's ratio, then a top-up of channels)")
    pr.add_argument("--calibration", default=None, help="wikitext2 | ptb | c4 | bookcorpus (default: the paper's)")
    pr.add_argument("--nsamples", type=positive_int, default=None, help="calibration sequences (default: the paper's)")
    pr.add_argument("--seqlen", type=positive_int, default=None, help="calibration tokens per sequence (default: the paper's)")
    pr.add_argument("--seed", type=seed_int, default=None,
                    help="calibration sample seed (default 0); also the seed of random scores (default: the method's)")
    pr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method or part option, repeatable")
    pr.add_argument("--perplexity", default=None, help="also evaluate: comma-separated wikitext2, ptb, c4")
    pr.add_argument("--eval-seqlen", type=positive_int, default=None, help="evaluation window length (default 128)")
    pr.add_argument("--recover", default="none", choices=["none", "lora"], help="recovery after pruning")
    pr.add_argument("--recover-steps", type=positive_int, default=None, help="LoRA optimiser steps, batch 8 (default 100)")
    pr.add_argument("--recover-lr", type=float, default=None, help="LoRA learning rate (default 1e-4)")
    pr.add_argument("--output", required=True, help="directory of the pruned checkpoint")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    pr.set_defaults(func=cmd_prune)

    ex = sub.add_parser("export", help="write a model (dense or pruned checkpoint) as a GGUF file for llama.cpp")
    ex.add_argument("checkpoint", help="a pruned checkpoint directory, embedded, tiny-smollm2, or a local model directory")
    ex.add_argument("--format", default="gguf", choices=["gguf"], help="the file format (llama.cpp's GGUF)")
    ex.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"],
                    help="weight type (q8_0 rows that are not multiples of 32 are written as f16)")
    ex.add_argument("--output", required=True, help="the .gguf file to write (atomically)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    ex.add_argument("--check", action="store_true",
                    help="run the file in llama.cpp and compare its next-token log-probabilities with PyTorch")
    ex.set_defaults(func=cmd_export)

    me = sub.add_parser("methods", help="list methods and parts, their options and defaults")
    me.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_dependent_options(args)
        return args.func(args)
    except (ValueError, OSError, ConnectionError, NotImplementedError, FloatingPointError, EngineError) as error:
        print(f"structprune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
