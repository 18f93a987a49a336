"""bench/gpu_deps.py: ovss's dependencies on a machine without a package index (the GPU machine)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench import gpu_deps

REPO = Path(__file__).resolve().parents[2]


def _fake_wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of one module ``name`` that sets ``VALUE = 42``."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_every_runtime_dependency_of_pyproject_is_checked() -> None:
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    names = [re.split(r"[<>=!~ ;\[]", line.strip().strip('",'))[0] for line in block.splitlines()]
    names = [n.lower().replace("-", "_") for n in names if n]
    assert names and set(names) <= set(gpu_deps.MODULES), set(names) - set(gpu_deps.MODULES)
    assert set(gpu_deps.FETCH) <= set(gpu_deps.MODULES)


def test_nothing_to_do_when_every_module_imports(tmp_path: Path) -> None:
    assert gpu_deps.ensure(["json", "torch"], tmp_path / "wheels", tmp_path / "site") is None
    assert not (tmp_path / "site").exists()


def test_a_missing_module_without_a_wheel_is_one_line_naming_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        gpu_deps.ensure(["json", "ovss_no_such_dep"], tmp_path / ".wheels", tmp_path / "site")
    message = str(info.value.code)
    assert "\n" not in message and "ovss_no_such_dep" in message and "json" not in message
    assert "python -m bench.gpu_deps --fetch" in message and "carry .wheels" in message


def test_a_missing_module_is_installed_from_its_wheel(tmp_path: Path) -> None:
    """Round trip through pip (no index): the wheel is installed into the target, importable there."""
    name = "ovss_fake_dep_for_gpu_deps"
    _fake_wheel(tmp_path / ".wheels", name)
    site = tmp_path / "site"
    try:
        assert gpu_deps.ensure([name], tmp_path / ".wheels", site) == str(site)
        module = __import__(name)
        assert module.VALUE == 42 and Path(module.__file__).is_relative_to(site)
    finally:
        sys.modules.pop(name, None)
        if str(site) in sys.path:
            sys.path.remove(str(site))


def test_the_command_prints_the_folder_for_pythonpath(tmp_path: Path) -> None:
    name = "ovss_fake_dep_cli"
    _fake_wheel(tmp_path / "w", name)
    cmd = [sys.executable, "-m", "bench.gpu_deps", "--wheels", str(tmp_path / "w"),
           "--target", str(tmp_path / "site"), "--modules", "json", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tmp_path / 'site'}\n"
    absent = [*cmd[:-1], "ovss_absent_dep"]
    proc = subprocess.run(absent, capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "ovss_absent_dep" in proc.stderr
