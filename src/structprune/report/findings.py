"""What the notebooks conclude from their tables, computed here so that each notebook only calls and prints."""

from __future__ import annotations

import pandas as pd

from .zero_shot import compare_zero_shot


def flap_findings(sweep: pd.DataFrame, ablation: pd.DataFrame, bias: dict[bool, dict], zero_shot_records: list[dict],
                  ratios: list[float], zero_shot_ratios: list[float]) -> list[tuple[str, str]]:
    """FLAP's paper findings on notebook 01's records: (verdict, finding), the verdict "holds", "does not hold" or
    "not distinguishable" (the zero-shot ones: paired on the same documents)."""
    ppl = sweep.set_index(["method", "ratio"]).perplexity
    findings = {
        "FLAP has lower perplexity than Wanda-sp at every ratio": all(ppl["FLAP", r] < ppl["Wanda-sp", r] for r in ratios),
        "FLAP has lower perplexity than LLM-Pruner at every ratio": all(ppl["FLAP", r] < ppl["LLM-Pruner", r]
                                                                      for r in ratios),
        "AL-AM is the best structure for WIFV": ablation.set_index("metric").loc["WIFV"].idxmin() == "AL-AM",
        "WIFV is the best metric under AL-AM": ablation.set_index("metric")["AL-AM"].idxmin() == "WIFV",
        "bias compensation lowers perplexity": bias[True]["metrics"]["perplexity"]["perplexity"]
                                               < bias[False]["metrics"]["perplexity"]["perplexity"],
    }
    for r in zero_shot_ratios:  # "best" only where paired comparisons on the same documents separate it from the rest
        at_ratio = {z["config"]["pruning"]["label"]: z for z in zero_shot_records
                    if z["config"]["pruning"]["method"] != "dense" and z["config"]["pruning"]["ratio"] == r}
        best = max(at_ratio, key=lambda label: at_ratio[label]["metrics"]["zero_shot"]["average"])
        beyond_noise = all(compare_zero_shot(at_ratio[best], at_ratio[other]) == "higher"
                           for other in at_ratio if other != best)
        findings[f"FLAP has the best zero-shot average at {r:.0%}"] = (
            best == "FLAP" if best != "FLAP" or beyond_noise else "not distinguishable")
    return [(holds if isinstance(holds, str) else "holds" if holds else "does not hold", claim)
            for claim, holds in findings.items()]


def cfsp_findings(table: pd.DataFrame, ratios: list[float], unrecovered: dict, recovered: dict[str, dict],
                  recovery_ratio: float) -> list[str]:
    """Notebook 03's summary lines: CFSP against the lowest FFN-only method at each ratio, the relative-score
    variant, and what each recovery did."""
    ppl = table.set_index(["method", "ratio"]).perplexity
    lines = []
    for ratio in ratios:
        ffn = {label: value for (label, r), value in ppl.items() if r == ratio and ("FFN" in label or label == "CFSP")}
        best = min(ffn, key=ffn.get)
        lines.append(f"{ratio:.0%}: CFSP {ppl[('CFSP', ratio)]:.2f}; lowest FFN-only: {best} {ffn[best]:.2f}; "
                     f"relative variant {ppl[('CFSP-style (relative score)', ratio)]:.2f}")
    for ranks, record in recovered.items():
        lines.append(f"recovery ({ranks} ranks) at {recovery_ratio:.0%}: "
                     f"{unrecovered['metrics']['perplexity']['perplexity']:.2f} -> "
                     f"{record['metrics']['perplexity']['perplexity']:.2f}")
    return lines


def fasp_findings(table: pd.DataFrame, ratios: list[float]) -> list[str]:
    """Notebook 04's summary lines: by how much the restoration divides perplexity, and the lowest method, per ratio
    and evaluation set."""
    ppl = table.set_index(["method", "ratio"])
    lines = []
    for ratio in ratios:
        for column in ("WikiText-2 PPL", "C4 PPL"):
            gain = ppl.loc[("FASP-style, no restoration", ratio), column] / ppl.loc[("FASP-style", ratio), column]
            best = ppl.xs(ratio, level="ratio")[column].idxmin()
            lines.append(f"{ratio:.0%} {column}: restoration divides perplexity by {gain:.2f}; lowest: {best}")
    return lines


def headline_comparisons(papers: list[dict], compositions: list[dict], dense: dict,
                         accuracy: dict[str, dict]) -> list[tuple[dict, dict, dict, dict]]:
    """Notebook 06's paired zero-shot comparisons at each target: the best composition against the lowest paper
    method, then each of them against the dense model, as (record a, zero-shot a, record b, zero-shot b) for
    `paired_zero_shot_rows`. papers / compositions: the lowest of each at every target, in target order;
    accuracy: zero-shot records by pruning run id."""
    comparisons = []
    for paper, composition in zip(papers, compositions, strict=True):
        comparisons.append((composition, accuracy[composition["run_id"]], paper, accuracy[paper["run_id"]]))
        comparisons += [(r, accuracy[r["run_id"]], dense, accuracy[dense["run_id"]]) for r in (composition, paper)]
    return comparisons
