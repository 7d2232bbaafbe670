"""Progress bars for the long loops (calibration layers, perplexity windows, recovery steps).

One helper, so every bar behaves alike: updated at most every 2 s (notebook logs stay readable), a widget in
JupyterLab (ipywidgets) and text on stderr elsewhere; plain text when STRUCTPRUNE_PROGRESS=text (papermill runs
set it, so executed notebooks hold no widget state), and silent when STRUCTPRUNE_PROGRESS=0 (tests and CI set it)
or when the loop has a single step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

PROGRESS_ENV = "STRUCTPRUNE_PROGRESS"


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it"):
    """`iterable` wrapped in a tqdm bar named `desc` (see the module docstring)."""
    mode = os.environ.get(PROGRESS_ENV, "1")
    if mode == "text":
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    quiet = mode == "0" or (total is not None and total <= 1)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet, mininterval=2.0, leave=False)
