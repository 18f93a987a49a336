"""The test tree mirrors the package (tests/README.md): every test file names a module of its package.

``tests/<pkg>/test_<module>.py`` tests ``src/ovss/<pkg>/<module>.py`` (``test_<module>_<topic>.py`` where a
module has several files); a sub-package's own module (its ``__init__.py``) is named by the sub-package,
one level up (``tests/data/test_prepare.py``), its modules in a mirrored folder
(``tests/weights/formats/test_san_d2.py``). ``tests/bench/`` mirrors the ``bench/`` scripts. The few
suites about the whole package rather than one module are listed in ``CROSS_CUTTING``, each with its
reason in tests/README.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tests.conftest import REPO_ROOT

# Test files (or folders, ending in "/") about the package as a whole, relative to tests/.
CROSS_CUTTING = (
    "parity/",
    "test_imports.py",
    "test_auto_bf16.py",
    "test_conftest.py",
    "test_layout.py",
    "demo/test_browser.py",
    "demo/test_served_security.py",
)


def _modules(package: Path) -> list[str]:
    """Names a test file of ``package`` may start with: its modules and its sub-packages."""
    if not (package / "__init__.py").is_file():
        return []
    files = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    return files + [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]


def names_a_module(test: PurePosixPath, src: Path, bench: Path, cross_cutting: Iterable[str]) -> bool:
    """Whether ``test`` (``tests/``-relative, e.g. ``weights/test_cache_files.py``) follows the rule."""
    if any(str(test) == c or (c.endswith("/") and str(test).startswith(c)) for c in cross_cutting):
        return True
    name = test.stem.removeprefix("test_")
    if test.parts[0] == "bench" and len(test.parts) == 2:
        names = [p.stem for p in bench.iterdir() if p.is_file() and not p.name.startswith("_")]
    else:
        names = _modules(src.joinpath(*test.parts[:-1]))
    return any(name == m or name.startswith(m + "_") for m in names)


def misnamed(root: Path, cross_cutting: Iterable[str] = CROSS_CUTTING) -> list[str]:
    """The test files under ``root/tests`` that name no module of their package (``root/src/ovss``)."""
    tests, src, bench = root / "tests", root / "src" / "ovss", root / "bench"
    found = (PurePosixPath(p.relative_to(tests).as_posix()) for p in tests.rglob("test_*.py"))
    return sorted(str(t) for t in found if not names_a_module(t, src, bench, list(cross_cutting)))


def test_every_test_file_names_a_module_of_its_package() -> None:
    assert misnamed(REPO_ROOT) == []


def test_a_test_file_that_names_no_module_is_reported(tmp_path: Path) -> None:
    for path in (
        "src/ovss/__init__.py", "src/ovss/config.py", "src/ovss/weights/__init__.py",
        "src/ovss/weights/cache.py", "src/ovss/weights/formats/__init__.py",
        "src/ovss/weights/formats/san_d2.py", "bench/plot.py", "bench/gpu_check.sh",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    good = [
        "test_config.py", "test_config_bounds.py", "weights/test_cache.py", "weights/test_cache_files.py",
        "weights/test_formats.py", "weights/formats/test_san_d2.py", "weights/formats/test_san_d2_keys.py",
        "bench/test_plot.py", "bench/test_gpu_check.py", "parity/test_any.py", "test_imports.py",
    ]
    bad = [
        "test_misc.py", "weights/test_misc.py", "weights/test_cachefiles.py", "weights/formats/test_san.py",
        "weights/test_formats_san_d2/test_x.py", "nosuch/test_config.py", "bench/test_nothing.py",
        "demo/test_browser_other.py",
    ]
    for path in good + bad:
        (tmp_path / "tests" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tests" / path).touch()
    (tmp_path / "tests" / "weights" / "_helpers.py").touch()  # not a test file
    assert misnamed(tmp_path, ("parity/", "test_imports.py", "demo/test_browser.py")) == sorted(bad)


def test_the_cross_cutting_suites_exist_and_are_documented() -> None:
    readme = (REPO_ROOT / "tests" / "README.md").read_text()
    for entry in CROSS_CUTTING:
        assert (REPO_ROOT / "tests" / entry).exists(), entry
        assert f"`tests/{entry}`" in readme, f"tests/README.md does not explain tests/{entry}"
