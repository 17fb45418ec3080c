"""A local Argilla 2.8 stack without Docker, on loopback ports: Redis, osmem (an in-memory
OpenSearch-compatible search engine), ``argilla-server`` and its worker, with SQLite under a data folder.

For people trying the loop on one machine, and for the tests. The server runs from its own virtualenv
``.venv-argilla`` (argilla-server pins libraries the project's ``.venv`` must not share; ``ARGILLA_STACK_VENV``
moves it); :func:`install` creates it, :func:`missing` says what is absent. The owner's password and API key are
drawn at random for each stack (:mod:`secrets`) and kept in the state file (mode 0600), which the ``annotate``
commands read when ``ARGILLA_API_URL``/``ARGILLA_API_KEY`` are unset (:class:`annotate.config.AnnotateSettings`).
For a server that outlives the session, use Docker compose instead (``docker/docker-compose.yml``).

CLI (``python -m annotate stack --help``)::

    python -m annotate stack install      # create .venv-argilla if missing (scripts/setup.sh does it)
    python -m annotate stack up           # start; state in ~/.cache/zeroshot-preannotate/stack/stack.json
    python -m annotate stack status       # is it answering? URL, user, data folder
    python -m annotate stack down         # stop what `up` started
"""

from __future__ import annotations

import json
import os
import secrets
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
USERNAME = "owner"
WORKSPACE = "argilla"


def default_state_path() -> Path:
    """Where ``stack up`` records the running stack: ``$ANNOTATE_STACK_STATE``, else
    ``$XDG_CACHE_HOME/zeroshot-preannotate/stack/stack.json`` (``~/.cache/...``)."""
    if os.environ.get("ANNOTATE_STACK_STATE"):
        return Path(os.environ["ANNOTATE_STACK_STATE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "zeroshot-preannotate" / "stack" / "stack.json"


def _new_password() -> str:
    return "pw-" + secrets.token_urlsafe(18)


def _new_api_key() -> str:
    return "argilla.apikey." + secrets.token_urlsafe(24)


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
    api_key: str = field(default_factory=_new_api_key)
    username: str = USERNAME
    password: str = field(default_factory=_new_password)
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
    def start(cls, data_dir: str | Path | None = None, timeout: float = 300.0) -> "ArgillaStack":
        """Start Redis, osmem, the Argilla server and worker on free loopback ports; create the owner user.

        A ``data_dir`` that an earlier stack used keeps its datasets and its owner: the owner's credentials are
        kept beside the database (``credentials.json``, mode 0600) and reused, so ``up`` after ``down`` serves the
        same datasets to the same login.

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
        credentials = data / "credentials.json"
        if credentials.is_file():  # the database already holds this owner
            known = json.loads(credentials.read_text(encoding="utf-8"))
            stack.username, stack.password, stack.api_key = known["username"], known["password"], known["api_key"]
        elif (data / "argilla.db").exists():
            raise RuntimeError(f"{data} holds an Argilla database but no credentials.json: remove the folder or pass "
                               "another --data-dir")
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
        steps = [["database", "migrate"]]
        if not (data / "credentials.json").is_file():  # a new database: its owner
            steps.append(["database", "users", "create", "--first-name", "Owner", "--username", self.username,
                          "--role", "owner", "--password", self.password, "--api-key", self.api_key,
                          "--workspace", self.workspace])
        for args in steps:
            run = subprocess.run([python, "-m", "argilla_server", *args], env=env, cwd=data, capture_output=True,
                                 text=True, timeout=timeout)
            if run.returncode:
                raise RuntimeError(f"argilla_server {' '.join(args[:2])} failed: {run.stderr[-2000:]}")
        write_private(data / "credentials.json", json.dumps({"username": self.username, "password": self.password,
                                                             "api_key": self.api_key}))
        self._spawn("argilla", [python, "-m", "argilla_server", "start", "--host", "127.0.0.1", "--port",
                                str(argilla_port), "--no-access-log"], env)
        self._spawn("worker", [python, "-m", "argilla_server", "worker", "--num-workers", "1"], env)
        self.url = f"http://127.0.0.1:{argilla_port}"

        def ready() -> bool:
            self._check_alive()
            try:
                return httpx.get(self.url + "/api/v1/me", headers={"X-Argilla-Api-Key": self.api_key},
                                 timeout=20).status_code == 200
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
        """Write the state (URL, credentials, pids) to ``path``, readable by its owner only (mode 0600)."""
        write_private(path, json.dumps(asdict(self), indent=2))

    def answering(self, timeout: float = 5.0) -> bool:
        """Whether the server at :attr:`url` accepts :attr:`api_key` now (``GET /api/v1/me`` is 200)."""
        import httpx

        try:
            return httpx.get(self.url + "/api/v1/me", headers={"X-Argilla-Api-Key": self.api_key},
                             timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    @classmethod
    def load(cls, path: str | Path) -> "ArgillaStack":
        return cls(**json.loads(Path(path).read_text()))


def write_private(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder made), readable and writable by its owner only (mode 0600): state files
    and credentials of the local stacks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


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
