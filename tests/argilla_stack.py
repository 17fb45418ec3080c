"""A real Argilla 2.8 stack on loopback ports, for tests and for people: Redis, osmem (in-memory
OpenSearch-compatible search engine), ``argilla-server`` and its worker, with SQLite under a data folder.

The server runs from its own virtualenv ``.venv-argilla`` (argilla-server pins libraries the project's .venv
must not share). ``install()`` creates it; ``missing()`` says what is absent so tests can skip.

CLI (for people and ``scripts/demo_session.sh``)::

    python -m tests.argilla_stack install            # create .venv-argilla if missing
    python -m tests.argilla_stack up --state runs/issue5/stack.json   # start, print shell exports
    python -m tests.argilla_stack down --state runs/issue5/stack.json # stop what `up` started
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("ARGILLA_STACK_VENV", REPO / ".venv-argilla"))
PACKAGES = ["argilla-server==2.8.0", "click<8.2", "osmem-server==0.1.6"]
USERNAME, PASSWORD, API_KEY = "owner", "owner-password-1", "owner.apikey.for.tests"
WORKSPACE = "argilla"


def _python() -> Path:
    return VENV / "bin" / "python"


def _osmem_bin() -> Path | None:
    found = sorted(VENV.glob("lib/python*/site-packages/osmem_server/bin/osmem-server"))
    return found[0] if found else None


def missing() -> str | None:
    """Why the stack cannot start here (``None`` when everything is installed)."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed (apt-get install redis-server, or bash scripts/setup.sh)"
    if not _python().exists():
        return f"{VENV} missing (python -m tests.argilla_stack install, or bash scripts/setup.sh)"
    if _osmem_bin() is None:
        return f"osmem-server not installed in {VENV}"
    probe = subprocess.run([str(_python()), "-c", "import argilla_server"], capture_output=True)
    if probe.returncode:
        return f"argilla-server not importable in {VENV}"
    return None


def install(python: str | None = None) -> None:
    """Create ``.venv-argilla`` with argilla-server 2.8.0 and osmem-server (idempotent)."""
    if not _python().exists():
        subprocess.run([python or sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
                   check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ArgillaStack:
    """A running stack; ``url``/``api_key`` are what clients need. ``stop()`` ends every process it started."""

    data_dir: str
    url: str = ""
    api_key: str = API_KEY
    username: str = USERNAME
    password: str = PASSWORD
    workspace: str = WORKSPACE
    pids: dict = field(default_factory=dict)
    owns_data_dir: bool = False

    def env(self) -> dict:
        return {"ARGILLA_API_URL": self.url, "ARGILLA_API_KEY": self.api_key, "ARGILLA_WORKSPACE": self.workspace}

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> None:
        log = open(Path(self.data_dir) / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=self.data_dir, start_new_session=True)
        log.close()
        self.pids[name] = proc.pid
        self.__dict__.setdefault("_procs", {})[name] = proc

    def _check_alive(self) -> None:
        """Raise with the log's tail when a process this stack started has exited."""
        for name, proc in self.__dict__.get("_procs", {}).items():
            if proc.poll() is not None:
                log = (Path(self.data_dir) / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}: {log}")

    @classmethod
    def start(cls, data_dir: str | Path | None = None, timeout: float = 120.0) -> "ArgillaStack":
        """Start Redis, osmem, the Argilla server and worker on free loopback ports; create the owner user.

        Raises:
            RuntimeError: something is not installed (see :func:`missing`) or did not come up in ``timeout``.
        """
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        owns = data_dir is None
        data = Path(data_dir or tempfile.mkdtemp(prefix="argilla-stack-")).resolve()
        data.mkdir(parents=True, exist_ok=True)
        stack = cls(data_dir=str(data), owns_data_dir=owns)
        try:
            stack._start(timeout)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start(self, timeout: float) -> None:
        import httpx

        data = Path(self.data_dir)
        redis_port, search_port, argilla_port = free_port(), free_port(), free_port()
        self._spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(data)])
        self._spawn("osmem", [str(_osmem_bin()), "--addr", f"127.0.0.1:{search_port}", "--no-stdin-watch", "--no-ja"])
        env = {**os.environ, "ARGILLA_HOME_PATH": str(data / "home"),
               "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'argilla.db'}?check_same_thread=False",
               "ARGILLA_SEARCH_ENGINE": "opensearch", "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{search_port}",
               "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "1", "ARGILLA_ENABLE_TELEMETRY": "0"}
        env.pop("VIRTUAL_ENV", None)
        python = str(_python())
        _wait(lambda: self._check_alive() or (_port_open(redis_port) and _port_open(search_port)), timeout,
              "redis and osmem to listen")
        for args in (["database", "migrate"],
                     ["database", "users", "create", "--first-name", "Owner", "--username", self.username,
                      "--role", "owner", "--password", self.password, "--api-key", self.api_key,
                      "--workspace", self.workspace]):
            run = subprocess.run([python, "-m", "argilla_server", *args], env=env, cwd=data, capture_output=True,
                                 text=True, timeout=timeout)
            if run.returncode:
                raise RuntimeError(f"argilla_server {' '.join(args[:2])} failed: {run.stderr[-2000:]}")
        self._spawn("argilla", [python, "-m", "argilla_server", "start", "--host", "127.0.0.1", "--port",
                                str(argilla_port), "--no-access-log"], env)
        self._spawn("worker", [python, "-m", "argilla_server", "worker", "--num-workers", "1"], env)
        self.url = f"http://127.0.0.1:{argilla_port}"

        def ready() -> bool:
            self._check_alive()
            try:
                return httpx.get(self.url + "/api/v1/me", headers={"X-Argilla-Api-Key": self.api_key},
                                 timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, timeout, f"Argilla at {self.url} (logs in {data})")

    def stop(self) -> None:
        """Terminate every process this stack started (SIGTERM, then SIGKILL), and remove its temp data."""
        for name, pid in reversed(list(self.pids.items())):
            _kill_group(pid)
        self.pids = {}
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ArgillaStack":
        return cls(**json.loads(Path(path).read_text()))


def _kill_group(pid: int, grace: float = 5.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if _reap(pid):
                return
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child (CLI `down`): poll with kill(0) only
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.argilla_stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="create .venv-argilla (argilla-server 2.8.0, osmem-server)")
    up = sub.add_parser("up", help="start a stack; print `export` lines for ARGILLA_API_URL/KEY")
    up.add_argument("--state", required=True, help="JSON file recording the processes (for `down`)")
    up.add_argument("--data-dir", help="where SQLite and logs go (default: next to --state)")
    down = sub.add_parser("down", help="stop the stack recorded in --state")
    down.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
        return 0
    if args.command == "up":
        data = Path(args.data_dir or Path(args.state).with_suffix("").as_posix() + "-data")
        try:
            stack = ArgillaStack.start(data)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        stack.save(args.state)
        for key, value in stack.env().items():
            print(f"export {key}={value}")
        print(f"export ARGILLA_USERNAME={stack.username} ARGILLA_PASSWORD={stack.password}")
        return 0
    state = Path(args.state)
    if not state.exists():
        print(f"error: no stack state at {state}", file=sys.stderr)
        return 1
    ArgillaStack.load(state).stop()
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
