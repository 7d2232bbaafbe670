"""Offline data: the WikiText-2 rows are the HF rows, joins follow the papers, calibration is seeded."""

from pathlib import Path

import pytest
import torch

from structprune.data import (
    calibration_batches,
    calibration_split,
    dataset_rows,
    default_data_dir,
    evaluation_text,
)


class CharTokenizer:
    """One token per character: enough to test windowing without a model."""

    def __call__(self, text, verbose=False):
        if isinstance(text, list):
            return {"input_ids": [[ord(c) % 256 for c in t] for t in text]}
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_data_folder_is_found():
    folder = default_data_dir()
    assert folder is not None and (folder / "wikitext2" / "wiki.test.raw").is_file()


def test_wikitext2_rows_are_the_hf_rows():
    rows, source = dataset_rows("wikitext2", "test")
    assert source.endswith("wiki.test.raw")
    assert len(rows) == 4358 and sum(1 for r in rows if r) == 2891  # HF: 4358 rows, 1467 empty
    # The independent variant file is "".join(HF rows) with CRLF line ends (shared/data/README.md).
    variant = default_data_dir() / "wikitext2" / "variants" / "wiki.test.nonempty-crlf.raw"
    assert "".join(rows).replace("\n", "\r\n").encode() == variant.read_bytes()
    text = evaluation_text("wikitext2", "test")
    assert text == "\n\n".join(rows)
    # rows "", " = Robert Boulter = \n", "", " Robert Boulter is ..." joined with "\n\n"
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_other_datasets_read():
    assert len(dataset_rows("ptb", "test")[0]) == 3761
    assert len(dataset_rows("c4", "validation")[0]) == 2000
    assert len(dataset_rows("bookcorpus", "train")[0]) == 10000
    assert calibration_split("wikitext2") == "validation"  # no train split offline, and it says so
    assert calibration_split("bookcorpus") == "train"


def test_calibration_windows_follow_the_seed():
    tok = CharTokenizer()
    a = calibration_batches(tok, "wikitext2", 4, 32, seed=0)
    b = calibration_batches(tok, "wikitext2", 4, 32, seed=0)
    c = calibration_batches(tok, "wikitext2", 4, 32, seed=1)
    assert a.shape == (4, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Windows are contiguous slices of the joined validation text (FLAP joins training rows with " ").
    text = " ".join(dataset_rows("wikitext2", "validation")[0])
    window = "".join(chr(i) for i in a[0].tolist())
    assert window in "".join(chr(ord(ch) % 256) for ch in text)


def test_document_samplers_draw_long_enough_rows():
    tok = CharTokenizer()
    c4 = calibration_batches(tok, "c4", 3, 64, seed=0)
    books = calibration_batches(tok, "bookcorpus", 3, 40, seed=42)
    assert c4.shape == (3, 64) and books.shape == (3, 40)


def test_too_many_calibration_tokens_is_refused():
    with pytest.raises(ValueError, match="too few calibration tokens.*Ask for fewer"):
        calibration_batches(CharTokenizer(), "wikitext2", 10_000, 2048)
    with pytest.raises(ValueError, match="too few calibration tokens"):
        calibration_batches(CharTokenizer(), "bookcorpus", 2, 5000)


def test_data_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTPRUNE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as error:
        dataset_rows("wikitext2", "test", data_path=tmp_path / "also-nowhere")
    message = str(error.value)
    assert "also-nowhere/wikitext2/wiki.test.raw" in message
    assert "nowhere/wikitext2/wiki.test.raw" in message
    assert "Hugging Face hub" in message and "STRUCTPRUNE_DATA" in message


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'wikitext103'.*wikitext2"):
        evaluation_text("wikitext103")


def test_records_name_data_files_relative_to_the_data_folder():
    from structprune.data import instruction_rows

    _, source = dataset_rows("wikitext2", "test")
    _, alpaca = instruction_rows()
    for name in (source, alpaca):
        assert name.startswith("STRUCTPRUNE_DATA/") and not Path(name).is_absolute()
