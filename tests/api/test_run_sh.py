"""`scripts/run.sh` as a person runs it: each step said with its time, then the address of the page to open."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from retail_prediction.data.synthetic import generate

from .conftest import REPO, free_port


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_run_sh_says_each_step_and_where_to_open_the_page(tmp_path: Path) -> None:
    generate(tmp_path / "data", weeks=4, customers=300, seed=1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_", "PROGRESS_", "LOG_"))}
    env.pop("HOST", None)  # the default 0.0.0.0, which a browser cannot open: the script must say 127.0.0.1
    env.update({"DATA_DIR": str(tmp_path / "data"), "MODEL_PATH": str(tmp_path / "model.tar.gz"), "PORT": str(port),
                "MODEL_DIR": str(tmp_path / "models"), "MODEL_POLL_SECONDS": "0"})
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=REPO, env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, seen = _lines_of(proc), []
    try:
        deadline = time.monotonic() + 240
        while not any(f"open {url} in a browser" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "\n".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    steps = [re.sub(r"^(\S+) \[\d+s\] ", r"\1 ", line) for line in seen if re.match(r"\S+\.sh \[\d+s\] ", line)]
    assert steps == [
        "run.sh setting up .venv (scripts/setup.sh)",
        "setup.sh .venv is up to date",
        f"run.sh training a model on {tmp_path / 'data'} into {tmp_path / 'model.tar.gz'} (a few minutes on the "
        "full LGSR data)",
        f"run.sh serving {tmp_path / 'model.tar.gz'} on port {port}: the server says the address to open (Ctrl+C "
        "stops it)",
    ], "\n".join(seen)
    assert any("ONNX export checked" in line for line in seen)  # training's own progress
    assert status == 0
