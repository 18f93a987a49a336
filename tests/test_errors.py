"""The exception hierarchy: every error is an OvssError, and the CLI prints each as exactly one line."""

from __future__ import annotations

import inspect

import pytest

import ovss.errors as errors
from ovss.cli.main import main

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]


def test_every_exception_of_the_module_is_an_ovss_error():
    assert len(CLASSES) >= 14
    assert all(issubclass(c, errors.OvssError) for c in CLASSES)
    # the built-in bases that callers may already catch
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.VocabularyError, ValueError)
    assert issubclass(errors.UnknownModelError, KeyError)
    assert issubclass(errors.WeightsNotFoundError, FileNotFoundError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.ImageTooLargeError, errors.ImageReadError)


def test_unknown_model_error_reads_as_its_message_not_a_quoted_key():
    error = errors.UnknownModelError("unknown model 'x'; see 'ovss models'")
    assert str(error) == "unknown model 'x'; see 'ovss models'"
    assert str(KeyError("k")) == "'k'"  # what KeyError alone would print
    assert str(errors.UnknownModelError()) == ""


def test_image_too_large_keeps_the_size():
    error = errors.ImageTooLargeError("too large; raise --max-pixels", (5000, 4000))
    assert error.size == (5000, 4000) and str(error) == "too large; raise --max-pixels"
    assert errors.ImageTooLargeError("too large").size is None


def test_missing_dependency_names_the_extra_to_install():
    error = errors.missing_dependency("PyAV", "video")
    assert isinstance(error, errors.MissingDependencyError)
    assert str(error) == "PyAV is not installed; install it with: pip install 'ovss[video]'"


def _construct(cls: type) -> Exception:
    return cls("the value 7 is bad; pass 8 instead")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_cli_prints_each_error_as_one_line(cls, monkeypatch, capsys, tmp_path):
    """A command raising any OvssError exits 1 with ``ovss: error: MESSAGE`` on one line, no traceback."""
    import ovss.cli.prepare

    def fail(args):
        raise _construct(cls)

    monkeypatch.setattr(ovss.cli.prepare, "run", fail)
    assert main(["prepare", "ade150", "--raw", str(tmp_path), "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "ovss: error: the value 7 is bad; pass 8 instead\n" and captured.out == ""


def test_debug_shows_the_traceback_instead(monkeypatch, tmp_path):
    import ovss.cli.prepare

    def fail(args):
        raise errors.DatasetError("no images; check --raw")

    monkeypatch.setattr(ovss.cli.prepare, "run", fail)
    with pytest.raises(errors.DatasetError, match="no images"):
        main(["prepare", "ade150", "--raw", str(tmp_path), "--out", str(tmp_path), "--debug"])
