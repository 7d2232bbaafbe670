"""The progress bars: widgets in JupyterLab, text for papermill, silent in tests."""

def test_bars_follow_the_progress_setting(monkeypatch):
    from tqdm.std import tqdm as text_bar

    from structprune.progress import PROGRESS_ENV, progress

    monkeypatch.setenv(PROGRESS_ENV, "text")
    bar = progress(range(3), "steps")
    assert type(bar) is text_bar and not bar.disable
    assert list(bar) == [0, 1, 2]
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert progress(range(3), "steps").disable
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert progress(range(1), "one step").disable  # a single step draws nothing


def test_notebook_bars_are_widgets_not_the_iprogress_fallback():
    """tqdm's notebook bar needs ipywidgets; without it, it fails with "IProgress not found"."""
    from tqdm.notebook import tqdm as notebook_bar

    bar = notebook_bar(total=2, disable=False)
    assert type(bar.container).__name__ == "TqdmHBox"  # an ipywidgets HBox
    bar.close()
