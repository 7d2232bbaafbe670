"""The offline data folder: where it is, whether it is complete, and how to fetch it from the hub.

Every calibration, perplexity and zero-shot loader reads one folder (WikiText-2, PTB, the C4 sample,
the BookCorpus head, the seven zero-shot sets, the Alpaca subset; `docs/data.md`). It is found at
$STRUCTPRUNE_DATA, else `shared/data` beside the repository, else `~/.cache/structprune/data`.

`python -m structprune.datafetch fetch` (`make data`) writes the folder from the datasets' public
sources on the Hugging Face hub and verifies every file against checksums this repository carries
(`data_manifest.json`): the sha256 of the file's bytes where the source gives the same file, and
otherwise the sha256 of the rows our loaders read from it (a derived form). A file that matches
neither is reported and never installed. Each file set is built in a staging folder beside the
destination and moved into place only once verified, so an interrupted download leaves nothing
half-written under a final name; a second run skips what is already there and verified.

`python src/structprune/datafetch.py check` needs only the standard library (it runs before any
install): it exits 0 when the folder is complete, else prints one line saying what is missing and
how to get it, and exits 2. With `--or-reachable` it also passes when the hub answers (and the hub is
not switched off by HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), since `make setup` then fetches the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DATA_ENV = "STRUCTPRUNE_DATA"
ENDPOINT_ENV = "HF_ENDPOINT"  # the hub's own variable: a mirror, or a local fake in tests
DEFAULT_ENDPOINT = "https://huggingface.co"
MANIFEST = Path(__file__).with_name("data_manifest.json")
PARQUET_BRANCH = "refs/convert/parquet"  # the hub's Parquet conversion of script-based datasets


def cache_data_dir() -> Path:
    """Where `make data` writes the folder when $STRUCTPRUNE_DATA is not set."""
    return Path("~/.cache/structprune/data").expanduser()


def default_data_dir() -> Path | None:
    """$STRUCTPRUNE_DATA, else `shared/data` beside the repository, else the fetched cache, when it exists."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", cache_data_dir()):
        if candidate.is_dir():
            return candidate
    return None


def manifest(path: Path = MANIFEST) -> dict:
    """The carried checksums: {"files": {relative path: {"sha256", "bytes"}}, "rows": {set name: sha256}}."""
    return json.loads(path.read_text())


def missing_files(folder: Path | None, files: dict | None = None) -> list[str]:
    """The manifest's files that `folder` lacks (every one when there is no folder)."""
    files = manifest()["files"] if files is None else files
    if folder is None or not folder.is_dir():
        return sorted(files)
    return sorted(name for name in files if not (folder / name).is_file())


def hint(folder: Path | None) -> str:
    """One line: what is missing and the command that gets it."""
    where = f"${DATA_ENV}={os.environ[DATA_ENV]}" if os.environ.get(DATA_ENV) else (
        f"no ${DATA_ENV}, no shared/data beside the repository, no {cache_data_dir()}")
    missing = missing_files(folder)
    what = "the offline data folder is missing" if folder is None or not folder.is_dir() else (
        f"the data folder {folder} lacks {len(missing)} file(s) ({', '.join(missing[:3])}"
        f"{', ...' if len(missing) > 3 else ''})")
    return (f"structprune: {what} ({where}): run `make data` with a network, or put the data folder at "
            f"{cache_data_dir()} or set {DATA_ENV} to it (docs/data.md)")


# ---------------------------------------------------------------------------------------------------------
# Sources: where each file set comes from on the hub, and how the folder's form is built from it.


@dataclass(frozen=True)
class HubFile:
    """One file of a dataset repository on the hub, fetched through its `resolve` URL."""

    repo: str
    path: str
    revision: str = "main"

    def url(self, endpoint: str) -> str:
        revision = urllib.parse.quote(self.revision, safe="")
        return f"{endpoint.rstrip('/')}/datasets/{self.repo}/resolve/{revision}/{self.path}"


@dataclass(frozen=True)
class Source:
    """A set of files of the folder built from hub files, and the loader whose rows verify them.

    build(downloaded paths, staging folder) writes `files` (relative paths) into the staging folder.
    rows: the loader the folder's readers use, as (module, function, args); its rows' digest is the carried
    check for a derived form. None where no loader reads the files (they must then match byte for byte).
    """

    name: str
    hub: tuple[HubFile, ...]
    files: tuple[str, ...]
    build: Callable[[list[Path], Path], None]
    rows: tuple[str, str, tuple] | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _write_jsonl(path: Path, rows: list[dict], compress: bool = False, compact: bool = False) -> None:
    import gzip

    # compact: ARC's own form, no spaces after separators and UTF-8 as is
    separators = (",", ":") if compact else None
    text = "".join(json.dumps(row, separators=separators, ensure_ascii=not compact) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:  # gzip -n -9: no name, no time stamp, so the bytes depend on the rows alone
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw,
                                                     mtime=0) as handle:
            handle.write(text.encode("utf-8"))
    else:
        _write_text(path, text)


def wikitext_raw(rows: list[str]) -> str:
    """The raw file from the hub's rows: one row per line, an empty row being a whitespace-only line."""
    return "".join(row if row else " \n" for row in rows)


def _build_wikitext(target: str, variant: str | None = None):
    def build(downloaded: list[Path], staging: Path) -> None:
        rows = [row["text"] for row in _parquet_rows(downloaded[0])]
        _write_text(staging / target, wikitext_raw(rows))
        if variant:  # "".join of the non-empty rows with CRLF line ends (kept for reference)
            _write_text(staging / variant, "".join(r.replace("\n", "\r\n") for r in rows if r))
    return build


def _build_lines(target: str, column: str, limit: int | None = None, pad: str = ""):
    """One row per line; `pad` restores the spaces the hub's loader stripped from each line (PTB)."""
    def build(downloaded: list[Path], staging: Path) -> None:
        rows = _parquet_rows(downloaded[0])[:limit]
        _write_text(staging / target, "".join(pad + str(row[column]) + pad + "\n" for row in rows))
    return build


def _build_c4(target: str):
    """The sample's documents, picked from the validation shard by the digests of their texts, in order."""
    def build(downloaded: list[Path], staging: Path) -> None:
        import gzip

        import pyarrow as pa
        import pyarrow.parquet as pq

        wanted = manifest()["c4_documents"]
        found: dict[str, dict] = {}
        with gzip.open(downloaded[0], "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                digest = hashlib.sha256(row["text"].encode("utf-8")).hexdigest()[:16]
                if digest in wanted and digest not in found:
                    found[digest] = row
        rows = [found[d] for d in wanted if d in found]
        if len(rows) != len(wanted):
            raise ValueError(f"{len(wanted) - len(rows)} of the {len(wanted)} C4 sample documents are not in "
                             f"{downloaded[0].name}")
        table = pa.table({k: [r[k] for r in rows] for k in ("text", "url", "timestamp")})
        (staging / target).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, staging / target)
    return build


def _build_boolq(downloaded: list[Path], staging: Path) -> None:
    rows = [{"question": r["question"], "passage": r["passage"], "idx": r["idx"], "label": bool(r["label"])}
            for r in _parquet_rows(downloaded[0])]
    _write_jsonl(staging / "boolq/val.jsonl.gz", rows, compress=True)


def _build_piqa(downloaded: list[Path], staging: Path) -> None:
    rows = _parquet_rows(downloaded[0])
    _write_jsonl(staging / "piqa/valid.jsonl", [{k: r[k] for k in ("goal", "sol1", "sol2")} for r in rows])
    _write_text(staging / "piqa/valid-labels.lst", "".join(f"{int(r['label'])}\n" for r in rows))


def _build_winogrande(downloaded: list[Path], staging: Path) -> None:
    rows = _parquet_rows(downloaded[0])
    _write_jsonl(staging / "winogrande/dev.jsonl",
                 [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in rows])
    _write_text(staging / "winogrande/dev-labels.lst", "".join(f"{r['answer']}\n" for r in rows))


def _build_ai2(target: str, question_field: str, compact: bool = False):
    """ARC and OpenBookQA in their original nested form (question.stem, question.choices[]); ARC's files have
    no spaces after separators."""
    def build(downloaded: list[Path], staging: Path) -> None:
        rows = [{"id": r["id"],
                 "question": {"stem": r[question_field],
                              "choices": [{"text": t, "label": lab}
                                          for t, lab in zip(r["choices"]["text"], r["choices"]["label"],
                                                            strict=True)]},
                 "answerKey": r["answerKey"]} for r in _parquet_rows(downloaded[0])]
        _write_jsonl(staging / target, rows, compact=compact)
    return build


def _build_hellaswag(downloaded: list[Path], staging: Path) -> None:
    """llama.cpp's HellaSwag text: "activity_label: ctx", the label, the four endings, per item."""
    import bz2

    lines = []
    for r in _parquet_rows(downloaded[0]):
        lines += [f"{r['activity_label']}: {r['ctx']}", str(r["label"]), *r["endings"]]
    path = staging / "hellaswag/hellaswag_val_full.txt.bz2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode("utf-8"), 9))


def _build_alpaca(downloaded: list[Path], staging: Path) -> None:
    rows = json.loads(downloaded[0].read_text(encoding="utf-8"))[:5000]
    _write_jsonl(staging / "alpaca-cleaned/alpaca_data_cleaned.first5000.jsonl.gz",
                 [{k: r[k] for k in ("instruction", "input", "output")} for r in rows], compress=True)


def _converted(repo: str, config: str, split: str) -> HubFile:
    return HubFile(repo, f"{config}/{split}/0000.parquet", PARQUET_BRANCH)


DATA = "structprune.data"
TASKS = "structprune.tasks.local_data"

SOURCES: tuple[Source, ...] = (
    Source("wikitext2-test", (HubFile("Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet"),),
           ("wikitext2/wiki.test.raw", "wikitext2/variants/wiki.test.nonempty-crlf.raw"),
           _build_wikitext("wikitext2/wiki.test.raw", "wikitext2/variants/wiki.test.nonempty-crlf.raw"),
           (DATA, "dataset_rows", ("wikitext2", "test"))),
    Source("wikitext2-validation",
           (HubFile("Salesforce/wikitext", "wikitext-2-raw-v1/validation-00000-of-00001.parquet"),),
           ("wikitext2/wiki.valid.raw",), _build_wikitext("wikitext2/wiki.valid.raw"),
           (DATA, "dataset_rows", ("wikitext2", "validation"))),
    Source("ptb-test", (_converted("ptb-text-only/ptb_text_only", "penn_treebank", "test"),),
           ("ptb/ptb.test.txt",), _build_lines("ptb/ptb.test.txt", "sentence", pad=" "),
           (DATA, "dataset_rows", ("ptb", "test"))),
    Source("ptb-validation", (_converted("ptb-text-only/ptb_text_only", "penn_treebank", "validation"),),
           ("ptb/ptb.valid.txt",), _build_lines("ptb/ptb.valid.txt", "sentence", pad=" "),
           (DATA, "dataset_rows", ("ptb", "validation"))),
    Source("c4-validation", (HubFile("allenai/c4", "en/c4-validation.00000-of-00008.json.gz"),),
           ("c4/c4_validation_2k.parquet",), _build_c4("c4/c4_validation_2k.parquet"),
           (DATA, "dataset_rows", ("c4", "validation"))),
    Source("bookcorpus-head", (_converted("bookcorpus/bookcorpus", "plain_text", "train"),),
           ("bookcorpus/train.head10000.txt",), _build_lines("bookcorpus/train.head10000.txt", "text", 10000),
           (DATA, "dataset_rows", ("bookcorpus", "train"))),
    Source("boolq", (_converted("aps/super_glue", "boolq", "validation"),), ("boolq/val.jsonl.gz",),
           _build_boolq, (TASKS, "boolq_rows", ())),
    Source("piqa", (_converted("ybisk/piqa", "plain_text", "validation"),),
           ("piqa/valid.jsonl", "piqa/valid-labels.lst"), _build_piqa, (TASKS, "piqa_rows", ())),
    Source("winogrande", (_converted("allenai/winogrande", "winogrande_xl", "validation"),),
           ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), _build_winogrande,
           (TASKS, "winogrande_rows", ())),
    Source("arc-easy", (_converted("allenai/ai2_arc", "ARC-Easy", "test"),), ("arc/ARC-Easy-Test.jsonl",),
           _build_ai2("arc/ARC-Easy-Test.jsonl", "question", compact=True), (TASKS, "arc_easy_rows", ())),
    Source("arc-challenge", (_converted("allenai/ai2_arc", "ARC-Challenge", "test"),),
           ("arc/ARC-Challenge-Test.jsonl",), _build_ai2("arc/ARC-Challenge-Test.jsonl", "question", compact=True),
           (TASKS, "arc_challenge_rows", ())),
    Source("openbookqa", (_converted("allenai/openbookqa", "main", "test"),), ("openbookqa/test.jsonl",),
           _build_ai2("openbookqa/test.jsonl", "question_stem"), (TASKS, "openbookqa_rows", ())),
    Source("hellaswag", (_converted("Rowan/hellaswag", "default", "validation"),),
           ("hellaswag/hellaswag_val_full.txt.bz2",), _build_hellaswag, (TASKS, "hellaswag_rows", ())),
    Source("alpaca-cleaned", (HubFile("yahma/alpaca-cleaned", "alpaca_data_cleaned.json"),),
           ("alpaca-cleaned/alpaca_data_cleaned.first5000.jsonl.gz",), _build_alpaca,
           (DATA, "instruction_rows", ())),
)


# ---------------------------------------------------------------------------------------------------------
# Checksums


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rows_sha256(rows) -> str:
    """The digest of what a loader returns: its rows as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(rows, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def loader_rows(rows_spec: tuple[str, str, tuple], folder: Path):
    """The rows the folder's loader reads from `folder` (the local copy only, never the hub)."""
    import importlib

    module, function, args = rows_spec
    result = getattr(importlib.import_module(module), function)(*args, data_path=folder)
    return result[0] if isinstance(result, tuple) else result


def verify(source: Source, folder: Path, carried: dict) -> list[str]:
    """What does not match the carried checksums in `folder`'s copy of `source` ([] when all match).

    Every file matches when its bytes do; a file whose bytes differ is accepted only through the rows its
    loader reads (a derived form), and only when every other file of the set matches too."""
    differing = []
    for name in source.files:
        path = folder / name
        if not path.is_file():
            differing.append(f"{name}: not written")
        elif file_sha256(path) != carried["files"][name]["sha256"]:
            differing.append(name)
    if not differing:
        return []
    if source.rows is None or source.name not in carried["rows"] or any("not written" in d for d in differing):
        return [f"{d}: sha256 differs from the carried checksum" if ":" not in d else d for d in differing]
    try:
        rows = loader_rows(source.rows, folder)
    except Exception as error:  # a derived file the loader cannot read is a mismatch, said as such
        return [f"{', '.join(differing)}: the loader cannot read it ({type(error).__name__}: {error})"]
    if rows_sha256(rows) != carried["rows"][source.name]:
        return [f"{', '.join(differing)}: neither the bytes nor the rows the loader reads match the carried "
                "checksums"]
    return []


# ---------------------------------------------------------------------------------------------------------
# Fetching


class HubUnreachable(OSError):
    """The hub (or the endpoint in $HF_ENDPOINT) did not answer."""


def download(url: str, target: Path, timeout: float = 60.0) -> None:
    """`url` to `target` through `target`.part; the part file is removed when the transfer breaks off."""
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            expected = response.headers.get("Content-Length")
            written = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                written += len(block)
            if expected is not None and written != int(expected):
                raise OSError(f"{url}: the transfer broke off after {written} of {expected} bytes")
        os.replace(part, target)
    except urllib.error.HTTPError as error:
        part.unlink(missing_ok=True)
        raise OSError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        part.unlink(missing_ok=True)
        raise HubUnreachable(f"{url}: {error.reason}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def fetch(destination: Path, sources: tuple[Source, ...] = SOURCES, carried: dict | None = None,
          endpoint: str | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Fetch, build and verify every file set into `destination`; returns the failures ([] on success).

    A set already in place and verified is skipped; a set that does not verify is not installed."""
    carried = manifest() if carried is None else carried
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    destination.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in sources:
        if not verify(source, destination, carried):
            log(f"{source.name}: present and verified")
            continue
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=destination))
        try:
            downloaded = []
            for number, hub_file in enumerate(source.hub):
                target = staging / f".download-{number}-{Path(hub_file.path).name}"
                log(f"{source.name}: {hub_file.url(endpoint)}")
                download(hub_file.url(endpoint), target)
                downloaded.append(target)
            source.build(downloaded, staging)
            problems = verify(source, staging, carried)
            if problems:
                failures += [f"{source.name}: {p}" for p in problems]
                continue
            for name in source.files:  # verified: into place, one rename each
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, destination / name)
            log(f"{source.name}: written and verified")
        except HubUnreachable:
            raise
        except Exception as error:
            failures.append(f"{source.name}: {type(error).__name__}: {error}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return failures


def write_manifest(folder: Path, path: Path = MANIFEST) -> None:
    """Record the checksums of a complete, verified folder (the maintainers' step when the data change)."""
    sums = dict(reversed(line.split(None, 1)) for line in (folder / "SHA256SUMS").read_text().splitlines()
                if line.strip())
    files, rows = {}, {}
    for source in SOURCES:
        for name in source.files:
            digest = file_sha256(folder / name)
            if sums.get(name) != digest:
                raise ValueError(f"{folder / name}: sha256 {digest} differs from the folder's SHA256SUMS")
            files[name] = {"sha256": digest, "bytes": (folder / name).stat().st_size}
        if source.rows is not None:
            rows[source.name] = rows_sha256(loader_rows(source.rows, folder))
    import pyarrow.parquet as pq

    texts = pq.read_table(folder / "c4/c4_validation_2k.parquet", columns=["text"]).column("text").to_pylist()
    documents = [hashlib.sha256(t.encode("utf-8")).hexdigest()[:16] for t in texts]
    payload = {"about": "checksums of the offline data folder: structprune.datafetch (docs/data.md)",
               "files": files, "rows": rows, "c4_documents": documents}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _check(or_reachable: bool) -> int:
    """0 when the folder is complete (or, with or_reachable, when the hub answers, so that setup fetches it)."""
    folder = default_data_dir()
    if not missing_files(folder):
        return 0
    endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    if or_reachable and not _offline() and _reachable(endpoint):
        print(f"structprune: the data folder is missing; `make setup` fetches it from {endpoint}", file=sys.stderr)
        return 0
    print(hint(folder), file=sys.stderr)
    return 2


def _fetch(only_if_missing: bool) -> int:
    folder = default_data_dir()
    if only_if_missing and not missing_files(folder):
        return 0
    destination = Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else cache_data_dir()
    if _offline():
        print(f"structprune: the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): put the data folder "
              f"at {destination} or set {DATA_ENV} to it (docs/data.md)", file=sys.stderr)
        return 2
    endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    unreachable = f"structprune: the hub cannot be reached at {endpoint}: put the data folder at {destination} " \
                  f"or set {DATA_ENV} to it (docs/data.md)"
    if not _reachable(endpoint):
        print(unreachable, file=sys.stderr)
        return 2
    try:
        failures = fetch(destination, endpoint=endpoint)
    except HubUnreachable:
        print(unreachable, file=sys.stderr)
        return 2
    for failure in failures:
        print(f"structprune data: {failure} (not installed)", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "check"
    if command == "check":
        return _check(or_reachable="--or-reachable" in args)
    if command == "fetch":
        return _fetch(only_if_missing="--if-missing" in args)
    if command == "manifest" and len(args) == 2:
        write_manifest(Path(args[1]))
        return 0
    print("usage: datafetch.py check [--or-reachable] | fetch [--if-missing] | manifest FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
