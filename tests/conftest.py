"""Shared test fixtures: one torch thread, parity fixture discovery."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("OVSS_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def parity_dir() -> Path:
    """Folder of the official parity fixtures (``$OVSS_PARITY_DIR``, default ``../shared/parity``)."""
    return Path(os.environ.get("OVSS_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))


def parity_folders(prefix: str) -> list[Path]:
    """Every fixture folder named ``<prefix>*`` under the parity dir, sorted (may be empty)."""
    root = parity_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


# ``OVSS_REQUIRE_FIXTURES=1`` (set by .ci/run): a test whose shared fixture or sample data is missing
# fails instead of skipping, so a checkout without ../shared cannot pass by skipping.
REQUIRE_FIXTURES_ENV = "OVSS_REQUIRE_FIXTURES"


def missing_fixture(what: object) -> NoReturn:
    """Skip the running test because ``what`` (a shared fixture or data path) is missing; fail it
    instead when ``$OVSS_REQUIRE_FIXTURES`` is 1."""
    reason = f"{what} not found (shared fixtures: ../shared, $OVSS_PARITY_DIR, $OVSS_DATA_DIR)"
    if os.environ.get(REQUIRE_FIXTURES_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_FIXTURES_ENV}=1 makes a missing fixture a failure", pytrace=False)
    pytest.skip(reason)


def needs(path: Path) -> Path:
    """``path`` when it exists, else :func:`missing_fixture` (skip, or fail under the flag)."""
    if not path.exists():
        missing_fixture(path)
    return path


def requires(path: Path) -> pytest.MarkDecorator:
    """A test mark: the test needs ``path`` (checked when it runs, by :func:`missing_fixture`)."""
    return pytest.mark.ovss_needs(path)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ovss_needs(path): the test needs this shared fixture or data path")
    config.addinivalue_line(
        "markers", "auto_bf16: dtype='auto' resolves to bf16 (as on CPUs with AVX512-BF16/AMX); .ci/run "
        "runs this group as its own step (tests/test_auto_bf16.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("ovss_needs"):
        needs(Path(mark.args[0]))


def parity_params(prefix: str) -> list:
    """``pytest.param`` per fixture folder with the folder name as id; if there are none, one param
    that skips (fails under ``$OVSS_REQUIRE_FIXTURES``)."""
    folders = parity_folders(prefix)
    if not folders:
        missing = parity_dir() / f"{prefix}*"
        return [pytest.param(None, id=f"no-{prefix}-fixtures", marks=requires(missing))]
    return [pytest.param(p, id=p.name) for p in folders]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """``||ours - ref|| / ||ref||`` in float64 (the parity bar is 1e-4)."""
    ours = torch.as_tensor(ours).double()
    ref = torch.as_tensor(ref).double()
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed (order kept)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def noise_photo(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """Write an (h, w) RGB PNG of uniform noise to ``path``; returns ``path``."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The captured stderr of a failed ``ovss`` command, checked to be one ``ovss: error:`` line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def segment_max_scores(args: list[str], out: Path, name: str = "photo") -> list[float]:
    """Run ``ovss segment ARGS --out OUT`` in-process (it must succeed); the classes' max scores
    from ``OUT/NAME.json``."""
    import json

    from ovss.cli.main import main

    assert main(["segment", *args, "--out", str(out)]) == 0
    return [c["max_score"] for c in json.loads((out / f"{name}.json").read_text())["classes"]]


def count_file_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the file of every ``ovss.utils.sha256_file`` call from now on (in every loaded ``ovss``
    module that imported it, the weights stages included); returns the growing list."""
    import sys

    import ovss.utils
    import ovss.weights.cache
    import ovss.weights.read
    import ovss.weights.urlfetch  # loaded, so their bindings are counted too

    real, seen = ovss.utils.sha256_file, []

    def counted(path: Path, *args: object, **kwargs: object) -> str:
        seen.append(Path(path).resolve())
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "ovss" and getattr(module, "sha256_file", None) is real:
            monkeypatch.setattr(module, "sha256_file", counted)
    return seen


@pytest.fixture(autouse=True, scope="session")
def _isolated_ovss_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's cache (~/.cache/ovss): each session gets its own."""
    os.environ["OVSS_HOME"] = str(tmp_path_factory.mktemp("ovss_home"))


@pytest.fixture(autouse=True)
def _auto_dtype_is_fp32(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dtype="auto"`` (the default of ovss.load, segment, demo) means fp32 in tests on every CPU, so
    results compared with references do not depend on whether the test machine has bf16 units.
    Tests marked ``auto_bf16`` get the other resolution, bf16, on every CPU."""
    import ovss.cpu

    native = request.node.get_closest_marker("auto_bf16") is not None
    monkeypatch.setattr(ovss.cpu, "native_bf16_cpu", lambda: native)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, offline ``$OVSS_HOME`` for the test (weights cache, text cache)."""
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny() -> tuple:
    """(state dict, config) of the random test-san-tiny model."""
    from ovss.weights.cache import load_model

    model, _ = load_model("test-san-tiny")
    return model.state_dict(), model.config


@pytest.fixture
def data_dir() -> Path:
    """The real sample photos (``../shared/data``)."""
    return needs(DATA_DIR)


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model gets loaded (``ovss.load``): the command must stop before."""
    import ovss.api.segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad argument was reported")

    monkeypatch.setattr(ovss.api.segmenter, "load", refuse)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket holds for the test (cli/test_demo.py, demo/test_app.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]
