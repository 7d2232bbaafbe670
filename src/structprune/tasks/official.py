"""lm-eval's own processing functions, re-exported for the local task YAMLs (`!function official.X`),
so that the local tasks score exactly as the official ones and nothing is re-implemented."""

import datasets
from lm_eval.tasks.hellaswag.utils import preprocess
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text


def hellaswag_approx_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's HellaSwag processing on the derived text: query = preprocess(context), where context is
    "activity_label: ctx_a ctx_b" with ctx_b *not* capitalised (the derived file lost the split)."""
    return dataset.map(lambda doc: {"query": preprocess(doc["context"]),
                                    "choices": [preprocess(e) for e in doc["endings"]],
                                    "gold": int(doc["label"])})


__all__ = ["doc_to_choice", "doc_to_target", "doc_to_text", "hellaswag_approx_docs", "preprocess"]
