"""The served demo for the tests that talk to it over HTTP (API client, raw requests, browser)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def serve_demo(root: Path, *args: str, model: str = "test-san-tiny") -> Iterator[str]:
    """Run ``ovss demo --model MODEL ARGS`` on a free port of 127.0.0.1 with its files under ``root``
    (``server.log``, the gradio folder ``gradio``, the temp folder ``tmp``); yields the page URL.

    On exit the server is stopped as ``kill`` does; it must exit 0 and leave no file of its own.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        OVSS_HOME=str(root / "home"),
        OVSS_OFFLINE="1",
        GRADIO_TEMP_DIR=str(root / "gradio"),
        GRADIO_ANALYTICS_ENABLED="False",
        OMP_NUM_THREADS="1",
        TMPDIR=str(root / "tmp"),
    )
    (root / "tmp").mkdir()
    log = root / "server.log"
    command = [sys.executable, "-m", "ovss.cli.main", "demo", "--model", model, "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ovss demo exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ovss demo did not answer within 180 s:\n{log.read_text()}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # `kill` stops the server as Ctrl+C does, removing its files
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "ovss demo: stopped" in log.read_text(), log.read_text()
    assert not list((root / "tmp").glob("ovss-demo-*"))
