"""The data folder's fetcher, against a local fake of the hub's dataset file API (no network)."""

import gzip
import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from structprune import datafetch
from structprune.data import default_data_dir
from tests.fake_hub import fake_hub, hub_form, hub_path, write_parquet

REPO = Path(__file__).resolve().parents[2]
SOURCES = {source.name: source for source in datafetch.SOURCES}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Anything of the fetcher's own left in the destination: staging folders, part files."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".staging-") or p.name.endswith(".part")]


def test_carried_checksums_are_those_of_the_data_folder():
    """Every file's bytes and every loader's rows in the folder equal what the manifest carries."""
    folder, carried = default_data_dir(), datafetch.manifest()
    assert set(carried["files"]) == {name for s in datafetch.SOURCES for name in s.files}
    for source in datafetch.SOURCES:
        for name in source.files:
            assert datafetch.file_sha256(folder / name) == carried["files"][name]["sha256"], name
        assert datafetch.rows_sha256(datafetch.loader_rows(source.rows, folder)) == carried["rows"][source.name]
        assert datafetch.verify(source, folder, carried) == []


def test_the_whole_folder_is_rebuilt_from_the_hubs_form(tmp_path):
    """Every source, served in the hub's form, is fetched, built and verified; the files our loaders read
    as text (WikiText-2, PTB, BookCorpus, the label lists) come back byte for byte, the rest row for row."""
    folder = default_data_dir()
    root = tmp_path / "hub"
    for source in datafetch.SOURCES:
        hub_form(source, folder, root)
    destination = tmp_path / "data"
    with fake_hub(root) as (endpoint, requests):
        assert datafetch.fetch(destination, endpoint=endpoint, log=lambda _: None) == []
        assert len(requests) == len(datafetch.SOURCES)
        again = []
        assert datafetch.fetch(destination, endpoint=endpoint, log=again.append) == []
        assert len(requests) == len(datafetch.SOURCES)  # nothing downloaded twice
        assert all(line.endswith("present and verified") for line in again)
    for name in ("wikitext2/wiki.test.raw", "wikitext2/wiki.valid.raw", "wikitext2/variants/wiki.test.nonempty-crlf.raw",
                 "ptb/ptb.test.txt", "ptb/ptb.valid.txt", "bookcorpus/train.head10000.txt",
                 "piqa/valid-labels.lst", "winogrande/dev-labels.lst", "arc/ARC-Easy-Test.jsonl",
                 "arc/ARC-Challenge-Test.jsonl", "openbookqa/test.jsonl"):
        assert (destination / name).read_bytes() == (folder / name).read_bytes(), name
    for source in datafetch.SOURCES:
        assert (datafetch.rows_sha256(datafetch.loader_rows(source.rows, destination))
                == datafetch.manifest()["rows"][source.name])
    assert _leftovers(destination) == []


def _tiny_wikitext(tmp_path):
    """A tiny WikiText source whose expected file is written out literally."""
    rows = ["", " = Title = \n", "", " some text .\n"]
    expected = b" \n = Title = \n \n some text .\n"
    source = replace(SOURCES["wikitext2-validation"])
    root = tmp_path / "hub"
    write_parquet(hub_path(root, source.hub[0]), [{"text": r} for r in rows])
    carried = {"files": {"wikitext2/wiki.valid.raw": {"sha256": _sha(expected)}}, "rows": {}}
    return source, root, carried, expected


def test_a_source_that_is_the_same_file_is_checked_by_its_bytes(tmp_path):
    source, root, carried, expected = _tiny_wikitext(tmp_path)
    with fake_hub(root) as (endpoint, _):
        assert datafetch.fetch(tmp_path / "data", (source,), carried, endpoint, log=lambda _: None) == []
    assert (tmp_path / "data/wikitext2/wiki.valid.raw").read_bytes() == expected


def test_a_derived_form_is_checked_by_the_rows_the_loader_reads(tmp_path):
    """BoolQ is kept as gzip'd JSON lines: its bytes are not the hub's, its rows are."""
    source = SOURCES["boolq"]
    root = tmp_path / "hub"
    hub_rows = [{"question": "is it so", "passage": "It is.", "idx": 0, "label": 1},
                {"question": "is it not", "passage": "It is.", "idx": 1, "label": 0}]
    write_parquet(hub_path(root, source.hub[0]), hub_rows)
    carried = {"files": {"boolq/val.jsonl.gz": {"sha256": "0" * 64}}, "rows": {"boolq": datafetch.rows_sha256(hub_rows)}}
    with fake_hub(root) as (endpoint, _):
        assert datafetch.fetch(tmp_path / "data", (source,), carried, endpoint, log=lambda _: None) == []
    with gzip.open(tmp_path / "data/boolq/val.jsonl.gz", "rt") as handle:
        assert '"label": true' in handle.readline()


def test_a_checksum_mismatch_is_reported_and_nothing_is_installed(tmp_path):
    source, root, carried, _ = _tiny_wikitext(tmp_path)
    carried["files"]["wikitext2/wiki.valid.raw"]["sha256"] = _sha(b"another file")
    carried["rows"]["wikitext2-validation"] = datafetch.rows_sha256(["other rows"])
    destination = tmp_path / "data"
    with fake_hub(root) as (endpoint, _):
        failures = datafetch.fetch(destination, (source,), carried, endpoint, log=lambda _: None)
    assert failures == ["wikitext2-validation: wikitext2/wiki.valid.raw: neither the bytes nor the rows the "
                        "loader reads match the carried checksums"]
    assert not (destination / "wikitext2/wiki.valid.raw").exists()
    assert _leftovers(destination) == []


def test_an_interrupted_download_leaves_nothing_under_a_final_name(tmp_path):
    source, root, carried, _ = _tiny_wikitext(tmp_path)
    destination = tmp_path / "data"
    (destination / "wikitext2").mkdir(parents=True)
    served = "/datasets/Salesforce/wikitext/resolve/main/" + source.hub[0].path
    with fake_hub(root, truncate={served}) as (endpoint, requests):
        failures = datafetch.fetch(destination, (source,), carried, endpoint, log=lambda _: None)
        assert requests == [served]
    assert len(failures) == 1 and "broke off" in failures[0]
    assert sorted(p.name for p in destination.rglob("*")) == ["wikitext2"]  # no file, no part, no staging


def test_offline_the_fetch_says_in_one_line_where_to_put_the_folder(tmp_path):
    env = {**os.environ, "STRUCTPRUNE_DATA": str(tmp_path / "data"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-m", "structprune.datafetch", "fetch"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and str(tmp_path / "data") in lines[0]
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-m", "structprune.datafetch", "fetch"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "switched off" in done.stderr


@pytest.mark.parametrize("state", ["missing", "incomplete"])
def test_the_check_runs_before_any_install_and_names_what_is_missing(tmp_path, state):
    """`-S -I`: no site-packages and no environment paths, so the check needs the standard library alone."""
    folder = tmp_path / "data"
    if state == "incomplete":
        (folder / "ptb").mkdir(parents=True)
        (folder / "ptb/ptb.test.txt").write_text(" a\n")
    done = subprocess.run([sys.executable, "-S", str(REPO / "src/structprune/datafetch.py"), "check"],
                          env={"STRUCTPRUNE_DATA": str(folder), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "make data" in lines[0]
    assert ("missing" in lines[0]) if state == "missing" else ("lacks 16 file(s)" in lines[0])
    done = subprocess.run([sys.executable, "-S", str(REPO / "src/structprune/datafetch.py"), "check"],
                          env={"STRUCTPRUNE_DATA": str(default_data_dir()), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == ""
