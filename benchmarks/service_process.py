"""``python -m service`` in a child process for the benchmarks: its own process, so its peak RSS is its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ServiceProcess:
    """Start the service on a free loopback port with ``settings`` (``ZSC_*`` environment variables on top of this
    process's environment) and wait until ``GET /ready`` is 200; stop it on exit.

    Attributes: ``url``; ``pid``; ``ready_s`` (seconds from start to ready); ``peak_rss_mb`` (the child's
    ``ru_maxrss``, set on exit: the largest of its own peak and those of processes it started and waited for).
    ``cwd``: the checkout whose ``service`` package runs (default: this one).

    Raises:
        RuntimeError: the service exited, or was not ready within ``ready_timeout_s`` seconds.
    """

    def __init__(self, settings: dict[str, str], *, ready_timeout_s: float = 600.0, cwd: Path = REPO) -> None:
        self.settings, self.ready_timeout_s, self.cwd = settings, ready_timeout_s, Path(cwd)
        self.url, self.ready_s, self.peak_rss_mb, self.pid = "", 0.0, 0.0, 0
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "ServiceProcess":
        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "ZSC_LOG_LEVEL": "warning", "NM_DISABLE_ANALYTICS": "1", **self.settings,
               "ZSC_PORT": str(port)}
        began = time.perf_counter()
        self._process = subprocess.Popen([sys.executable, "-m", "service"], cwd=self.cwd, env=env)
        self.pid = self._process.pid
        self.url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if self._process.poll() is not None:
                    raise RuntimeError(f"the service exited with {self._process.returncode} ({self.settings})")
                if time.perf_counter() - began > self.ready_timeout_s:
                    raise RuntimeError(f"the service was not ready within {self.ready_timeout_s:.0f} s")
                time.sleep(0.2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.ready_s = time.perf_counter() - began
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.returncode is not None:  # it exited on its own and poll() reaped it: no usage to read
            return
        process.terminate()
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0
        self.peak_rss_mb = usage.ru_maxrss / 1024
