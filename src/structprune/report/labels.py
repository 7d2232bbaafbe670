"""How records are named in tables and captions: method labels, task names, protocols, devices, intervals."""

from __future__ import annotations

from ..composition import COMPOSED
from ..evaluate import PAPER_METRIC, PAPER_TASKS
from ..experiments import calibration_of
from ..methods import get_method
from ..profiles import PROFILES, profile_settings

TASK_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA"}


def method_label(record: dict) -> str:
    config = record["config"]
    return "Dense" if config["method"] == "dense" else config["label"]


def paired_text(paired: dict, against: str = "") -> str:
    """A paired perplexity ratio (`evaluate.paired_perplexity`) as "ratio<against> [low, high]"."""
    return f"{paired['ratio']:.2f}{against} [{paired['ci95'][0]:.2f}, {paired['ci95'][1]:.2f}]"


def metric_note() -> str:
    metrics = ", ".join(f"{TASK_NAMES[t]} {PAPER_METRIC[t]}" for t in PAPER_TASKS)
    return f"metrics: {metrics} (the papers' convention); HellaSwag from the derived local text (approximation)"


def protocol_caption(record: dict) -> str:
    """The protocol of a pruning record's numbers, for captions."""
    config = record["config"]
    evaluation = config["evaluation"]
    windows = "all windows" if evaluation["max_windows"] is None else f"first {evaluation['max_windows']} windows"
    return (f"model {config['model']} ({config['profile']} profile); {evaluation['dataset']} {evaluation['split']} "
            f"perplexity, non-overlapping {evaluation['seqlen']}-token windows, {windows}")


def device_name(speed: dict) -> str:
    """"CPU" or "CUDA": where a speed record measured (its `device`, e.g. cpu or cuda:0)."""
    return speed["device"].split(":")[0].upper()


def precision_caption(speed: dict) -> str:
    """Device and dtype of a speed record, as captions name them: e.g. "CPU float32", "CUDA bfloat16"."""
    return f"{device_name(speed)} {speed['dtype'].removeprefix('torch.')}"


# Options a method's label already names (label_of), or that do not change the pruned model.
_NAMED_OPTIONS = {"attention", "allocation", "fine_metric", "fusion", "seed", "batch_size"}


def variant_marks(config: dict) -> list[str]:
    """What a pruning run's config changes from its method's profile defaults: options and calibration (e.g.
    ["restore=False"], ["nsamples=32"]); none for the dense model and compositions (their labels name it all)."""
    if config["method"] in ("dense", COMPOSED):
        return []
    defaults = get_method(config["method"]).defaults
    marks = [f"{k}={v}" for k, v in config.get("options", {}).items()
             if k not in _NAMED_OPTIONS and k in defaults and v != defaults[k]]
    if config.get("profile") in PROFILES:
        usual = calibration_of(profile_settings(config["profile"]), config["method"])
        calibration = config.get("calibration") or {}
        differs = [k for k in ("dataset", "nsamples", "seqlen") if usual and calibration.get(k) != usual[k]]
        if differs == ["nsamples"]:
            marks.append(f"nsamples={calibration['nsamples']}")
        elif differs and calibration:
            marks.append(f"calibration={calibration['dataset']} {calibration['nsamples']}x{calibration['seqlen']}")
    return marks


def variant_label(config: dict) -> str:
    """The method's label plus what differs from its profile defaults: options, calibration, recovery
    (e.g. "FASP-style [restore=False]", "FLAP [nsamples=32]", "CFSP + lora (importance ranks)")."""
    if config["method"] == "dense":
        return "Dense"
    marks = variant_marks(config)
    label = config["label"] + (f" [{', '.join(marks)}]" if marks else "")
    recovery = config.get("recovery")
    if recovery:
        ranks = recovery.get("ranks", "uniform")
        label += f" + {recovery.get('method', 'lora')}" + (f" ({ranks} ranks)" if ranks != "uniform" else "")
    return label


def calibration_note(calibrations: dict[str, dict | None], tokens_and_seed: bool = False) -> str:
    """The calibration of each named run, for captions: "flap: wikitext2 512 x 128; ..." (with "tokens, seed s"
    after each when asked); runs without calibration data are left out."""
    def one(c: dict) -> str:
        text = f"{c['dataset']} {c['nsamples']} x {c['seqlen']}"
        return f"{text} tokens, seed {c['seed']}" if tokens_and_seed else text

    return "; ".join(f"{name}: {one(c)}" for name, c in calibrations.items() if c)
