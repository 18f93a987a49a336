"""ovss's own Python dependencies on a machine that cannot reach a package index (the GPU machine).

The GPU machine's image holds torch, numpy, pillow, scipy, safetensors, huggingface_hub, regex and
tqdm, but not ``ftfy`` (CLIP's text clean-up, used by every vocabulary) or its dependency ``wcwidth``.
So, in two steps:

    python -m bench.gpu_deps --fetch        # here, where pip reaches PyPI: wheels into .wheels/
    python -m bench.gpu_deps                # there (bench/gpu_check.sh does it): check, install

``.wheels/`` is git-ignored and travels with the tree when named in the device call's ``carry``.
The second form prints nothing when every module imports, or the folder it installed the missing
ones into (for ``PYTHONPATH``); a module still missing is one line on stderr naming it and the fix,
exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".wheels"
# import name of every runtime dependency in pyproject.toml ([project] dependencies), and ftfy's own
MODULES = {
    "torch": "torch",
    "numpy": "numpy",
    "pillow": "PIL",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "ftfy": "ftfy",
    "wcwidth": "wcwidth",
    "regex": "regex",
    "scipy": "scipy",
    "tqdm": "tqdm",
}
FETCH = ("ftfy", "wcwidth")  # what the GPU image lacks (KINDS.md's package list, 2026-11-17)
TARGET = ("3.12", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"))


def missing(modules: list[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    importlib.invalidate_caches()
    return [m for m in modules if importlib.util.find_spec(m) is None]


def fetch(folder: Path, names: list[str]) -> list[Path]:
    """Download ``names`` (no dependencies) as wheels for the GPU machine's Python into ``folder``."""
    version, platforms = TARGET
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", version, "--implementation", "cp", "-d", str(folder)]
    for platform in platforms:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *names], check=True)
    return sorted(folder.glob("*.whl"))


def install(wheels: list[Path], site: Path) -> None:
    """Install ``wheels`` into ``site`` without any index (pip ``--target``)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
        check=True, stdout=subprocess.DEVNULL,
    )


def ensure(modules: list[str], folder: Path, site: Path) -> str | None:
    """Install what is missing from the wheels in ``folder`` into ``site``.

    Returns:
        ``str(site)`` when it installed something, None when nothing was missing.

    Raises:
        SystemExit: a module is still missing (one line: which, and how to bring it).
    """
    absent = missing(modules)
    if not absent:
        return None
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        install(wheels, site)
        sys.path.insert(0, str(site))
        absent = missing(absent)
    if absent:
        raise SystemExit(
            f"gpu_deps: cannot import {', '.join(absent)} and {folder} has no wheel of it; run "
            f"'python -m bench.gpu_deps --fetch' on a machine with pip access and carry {folder.name} "
            "with the tree"
        )
    return str(site)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help=f"download {' and '.join(FETCH)} as wheels")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="the wheel folder")
    parser.add_argument("--target", type=Path, default=Path("/tmp/ovss_gpu_site"), help="install here")
    parser.add_argument("--modules", nargs="+", default=list(MODULES.values()), help="import names")
    args = parser.parse_args(argv)
    if args.fetch:
        args.wheels.mkdir(parents=True, exist_ok=True)
        for wheel in fetch(args.wheels, list(FETCH)):
            print(wheel)
        return 0
    site = ensure(args.modules, args.wheels, args.target)
    if site:
        print(site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
