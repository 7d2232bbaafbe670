"""Text for calibration and evaluation, offline first.

One resolution order for every dataset: an explicit `data_path` argument; else the folder named by
$STRUCTPRUNE_DATA (default: `shared/data` beside the repository, else the folder `make data` fetched into
~/.cache/structprune/data, `datafetch.default_data_dir`); else the Hugging Face hub through `datasets.load_dataset` (for users with a network). When nothing is found the error
lists every place it looked.

Row conventions follow the pruning papers' code:
- WikiText-2 rows are the lines of the raw file, whitespace-only lines as empty strings (exactly the
  HF `wikitext-2-raw-v1` rows); evaluation joins them with "\\n\\n" (FLAP, LLM-Pruner, Wanda);
  calibration joins the training rows with " " (FLAP's `get_wikitext2`).
- PTB rows are the sentence lines (HF `ptb_text_only`), joined like WikiText-2 (LLM-Pruner).
- C4 rows are documents; calibration draws a document until one is longer than `seqlen` tokens, then a
  random window (Wanda's `get_c4`); evaluation joins documents with " " (SparseGPT's C4 protocol).
- BookCorpus rows are sentences; calibration draws rows with at least `seqlen` tokens (LLM-Pruner).
The local folder has no WikiText-2, PTB or C4 *train* split: calibration then uses the validation split
and says so (`calibration_split`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import random
from pathlib import Path

import torch

from .datafetch import DATA_ENV, default_data_dir  # noqa: F401  (one resolution order, stdlib-only)

DATASETS = ("wikitext2", "ptb", "c4", "bookcorpus")

# (dataset, split) -> file in the data folder (docs/data.md: provenance, and how `make data` fetches it).
LOCAL_FILES = {
    ("wikitext2", "test"): "wikitext2/wiki.test.raw",
    ("wikitext2", "validation"): "wikitext2/wiki.valid.raw",
    ("ptb", "test"): "ptb/ptb.test.txt",
    ("ptb", "validation"): "ptb/ptb.valid.txt",
    ("c4", "validation"): "c4/c4_validation_2k.parquet",
    ("bookcorpus", "train"): "bookcorpus/train.head10000.txt",
}
# The split calibration uses locally when the train split is not in the folder.
LOCAL_TRAIN_FALLBACK = {"wikitext2": "validation", "ptb": "validation", "c4": "validation", "bookcorpus": "train"}

# dataset -> (load_dataset args, text field) for the hub.
HUB = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {}, "text"),
    "ptb": (("ptb_text_only", "penn_treebank"), {}, "sentence"),
    "c4": (("allenai/c4",), {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz",
                                            "validation": "en/c4-validation.00000-of-00008.json.gz"}}, "text"),
    "bookcorpus": (("bookcorpus",), {}, "text"),
}
EVAL_JOIN = {"wikitext2": "\n\n", "ptb": "\n\n", "c4": " ", "bookcorpus": " "}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")


def _read_local_rows(dataset: str, path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [str(t) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        text = handle.read()
    if dataset == "wikitext2":
        # One HF row per line, newline kept; whitespace-only lines are empty rows.
        return [line if line.strip() else "" for line in text.splitlines(keepends=True)]
    if dataset == "ptb":
        return text.splitlines()  # HF ptb_text_only: one `sentence` per line, no newline
    return [line.strip() for line in text.splitlines()]  # bookcorpus: the HF generator strips


def dataset_rows(dataset: str, split: str, data_path: str | Path | None = None) -> tuple[list[str], str]:
    """The rows of `dataset`/`split` and where they came from (a file path or `hub:<name>`)."""
    _check_dataset(dataset)
    looked = []
    folders = [Path(data_path).expanduser()] if data_path else []
    env_dir = default_data_dir()
    if env_dir is not None:
        folders.append(env_dir)
    relative = LOCAL_FILES.get((dataset, split))
    for folder in folders:
        if relative is None:
            looked.append(f"{folder} (no local file for {dataset}/{split})")
            continue
        path = folder / relative
        if path.is_file():
            try:
                return _read_local_rows(dataset, path), local_source(relative)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}): the file is damaged "
                                 f"or not the {dataset} data; restore it (see the data folder's README)") from None
        looked.append(str(path))
    if not folders:
        looked.append(f"${DATA_ENV} (not set), shared/data beside the repository and ~/.cache/structprune/data (missing)")
    try:
        import datasets

        args, kwargs, field = HUB[dataset]
        rows = datasets.load_dataset(*args, split=split, **kwargs)[field]
        return list(rows), f"hub:{'/'.join(args)}"
    except Exception as error:  # offline, or the split does not exist
        looked.append(f"the Hugging Face hub ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
    raise FileNotFoundError(
        f"no data for {dataset}/{split}. Looked in: " + "; ".join(looked)
        + f". Run `make data` with a network, or set {DATA_ENV} to the data folder (docs/data.md), or pass data_path."
    )


def evaluation_text(dataset: str, split: str = "test", data_path: str | Path | None = None) -> str:
    """The evaluation text, joined as the papers' perplexity code joins it."""
    rows, _ = dataset_rows(dataset, split, data_path)
    return EVAL_JOIN[dataset].join(rows)


def calibration_split(dataset: str, data_path: str | Path | None = None) -> str:
    """The split calibration reads: `train` where it exists, else the documented local fallback."""
    _check_dataset(dataset)
    folder = Path(data_path).expanduser() if data_path else default_data_dir()
    if folder is not None and (folder / LOCAL_FILES.get((dataset, "train"), "-")).is_file():
        return "train"
    if folder is not None and (folder / LOCAL_FILES[(dataset, LOCAL_TRAIN_FALLBACK[dataset])]).is_file():
        return LOCAL_TRAIN_FALLBACK[dataset]
    return "train"  # the hub has every train split


def _token_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)


def calibration_batches(tokenizer, dataset: str, nsamples: int, seqlen: int, seed: int = 0,
                        data_path: str | Path | None = None, bos_token_id: int | None = None) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens, as a [nsamples, seqlen] tensor of token ids.

    bos_token_id: every window is this token, then seqlen - 1 tokens drawn as below (families whose windows
    start with BOS, `architectures.window_bos_id`).

    wikitext2/ptb: windows of the joined training text (FLAP/Wanda: `random.seed(seed)`, start uniform
    in [0, len - seqlen - 1]). c4: a random document longer than seqlen, then a random window (Wanda).
    bookcorpus: a random row with at least seqlen tokens, then a random window (LLM-Pruner).
    """
    _check_dataset(dataset)
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"calibration needs nsamples >= 1 and seqlen >= 2 (got {nsamples} x {seqlen})")
    if bos_token_id is not None:
        if seqlen < 3:
            raise ValueError(f"windows that start with BOS need seqlen >= 3 (got {seqlen})")
        body = calibration_batches(tokenizer, dataset, nsamples, seqlen - 1, seed, data_path)
        return torch.cat([torch.full((nsamples, 1), bos_token_id, dtype=body.dtype), body], 1)
    rows, source = dataset_rows(dataset, calibration_split(dataset, data_path), data_path)
    rng = random.Random(seed)
    if dataset in ("wikitext2", "ptb"):
        ids = _token_ids(tokenizer, " ".join(rows))
        if nsamples * seqlen > ids.numel() or ids.numel() <= seqlen + 1:
            raise ValueError(
                f"too few calibration tokens: {nsamples} x {seqlen} = {nsamples * seqlen} asked, but {source} "
                f"holds {ids.numel()} tokens. Ask for fewer samples or shorter windows."
            )
        starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
        return torch.stack([ids[s:s + seqlen] for s in starts])
    # Document samplers (Wanda's get_c4, LLM-Pruner's get_bookcorpus): draw a row uniformly, with replacement,
    # until one is long enough, then a random window. Rows are tokenised once, up front; the random stream is
    # the original code's. Few long rows means repeated rows (BookCorpus's head has 6 rows of >= 64 SmolLM2
    # tokens), which the original code allows too.
    min_len = seqlen + 1 if dataset == "c4" else seqlen
    encoded = [torch.tensor(ids, dtype=torch.long) for ids in tokenizer(rows, verbose=False)["input_ids"]]
    if not any(ids.numel() >= min_len for ids in encoded):
        raise ValueError(
            f"too few calibration tokens: no row of {source} has {min_len} tokens, needed for windows of "
            f"{seqlen}. Ask for shorter windows."
        )
    windows = []
    while len(windows) < nsamples:
        ids = encoded[rng.randint(0, len(rows) - 1)]
        if ids.numel() < min_len:
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1) if dataset == "c4" else rng.randint(0, ids.numel() - seqlen)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


ALPACA_FILE = "alpaca-cleaned/alpaca_data_cleaned.first5000.jsonl.gz"


def local_source(relative: str) -> str:
    """How records name a file of the data folder: relative to it, never a path of this machine."""
    return f"{DATA_ENV}/{relative}"


def instruction_rows(data_path: str | Path | None = None) -> tuple[list[dict], str]:
    """Alpaca-cleaned instruction rows ({instruction, input, output}) for LoRA recovery: the local subset
    (the first 5,000 of 51,760 rows), else the hub's `yahma/alpaca-cleaned`."""
    import json

    looked = []
    folders = ([Path(data_path).expanduser()] if data_path else []) + [default_data_dir()]
    for folder in filter(None, folders):
        path = folder / ALPACA_FILE
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()], local_source(ALPACA_FILE)
        looked.append(str(path))
    try:
        import datasets

        return list(datasets.load_dataset("yahma/alpaca-cleaned", split="train")), "hub:yahma/alpaca-cleaned"
    except Exception as error:
        looked.append(f"the Hugging Face hub ({type(error).__name__})")
    raise FileNotFoundError(f"no Alpaca-cleaned data. Looked in: {'; '.join(looked)}. Set {DATA_ENV}.")


def token_digest(ids: torch.Tensor) -> str:
    """The digest records keep of calibration token ids (the first 16 hex digits of their sha256)."""
    return hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16]


def random_calibration(vocab_size: int, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Uniform random token ids, for tests on the tiny model (which has no tokenizer)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (nsamples, seqlen), generator=generator)
