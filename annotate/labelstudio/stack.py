"""A local Label Studio 1.23 without Docker: SQLite under a data folder, on a loopback port.

The server runs from its own virtualenv ``.venv-labelstudio`` (label-studio pins Django and friends the project's
``.venv`` must not share; ``LABEL_STUDIO_STACK_VENV`` moves it); :func:`install` creates it. The admin's password and
legacy API token are drawn at random for each data folder and kept beside its database (``credentials.json``, mode
0600) and in the state file, which the ``annotate`` commands read when ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``
are unset.

The settings that bite a local Label Studio, all set here: ``ML_BLOCK_LOCAL_IP=false`` and
``SSRF_PROTECTION_ENABLED=false`` (else a backend or webhook on 127.0.0.1 gets 403, and with only the first the
backend row is created half-connected), ``--internal-host 127.0.0.1``, ``--enable-legacy-api-token`` (legacy tokens
are off otherwise), ``SENTRY_DSN``/``FRONTEND_SENTRY_DSN`` empty (error reporting is on by default), and the plain
``USERNAME``, ``PASSWORD``, ``PORT`` and ``HOST`` environment variables removed (Label Studio reads them as its own).
A fresh database runs its migrations once (about a minute); a data folder that ran them starts in seconds, and
:func:`template` keeps one migrated folder to copy (tests start a server per module from it).

CLI: ``python -m annotate stack up --tool labelstudio`` (``status``, ``down`` likewise).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from annotate.stack import _kill_group, _wait, free_port, write_private

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("LABEL_STUDIO_STACK_VENV") or REPO / ".venv-labelstudio")
VERSION = "1.23.2"
PACKAGES = [f"label-studio=={VERSION}"]
USERNAME = "admin@localhost"
#: The environment variables Label Studio reads as its own settings under plain names.
LEAKING = ("USERNAME", "PASSWORD", "PORT", "HOST")


def default_state_path() -> Path:
    """Where ``stack up --tool labelstudio`` records the server: ``$ANNOTATE_LS_STACK_STATE``, else
    ``$XDG_CACHE_HOME/zeroshot-preannotate/stack/labelstudio.json``."""
    if os.environ.get("ANNOTATE_LS_STACK_STATE"):
        return Path(os.environ["ANNOTATE_LS_STACK_STATE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "zeroshot-preannotate" / "stack" / "labelstudio.json"


def _binary() -> Path:
    return VENV / "bin" / "label-studio"


def missing() -> str | None:
    """Why the server cannot start here (``None`` when it is installed)."""
    if not _binary().exists():
        return f"{VENV} missing (python -m annotate stack install --tool labelstudio, or bash scripts/setup.sh)"
    return None


def install(python: str | None = None) -> None:
    """Create ``.venv-labelstudio`` with label-studio (idempotent)."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([python or sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *PACKAGES], check=True)


def _environment(data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LEAKING and k != "VIRTUAL_ENV"}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
               ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", COLLECT_ANALYTICS="false",
               LABEL_STUDIO_COLLECT_ANALYTICS="false", DJANGO_DB="sqlite")
    return env


def template(cache: str | Path | None = None, timeout: float = 600.0) -> Path:
    """A data folder whose database ran Label Studio's migrations (made once: ``label-studio init``), to copy.

    Raises:
        RuntimeError: Label Studio is not installed, or the migrations failed.
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    root = Path(cache or Path(tempfile.gettempdir()) / f"labelstudio-template-{VERSION}")
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run = subprocess.run([str(_binary()), "init", "--data-dir", str(root), "--agree-fix-sqlite", "--quiet"],
                         env=_environment(root), capture_output=True, text=True, timeout=timeout, cwd=root)
    if run.returncode:
        raise RuntimeError(f"label-studio init failed: {run.stderr[-2000:]}")
    (root / "ready").write_text("migrated\n")
    return root


@dataclass
class LabelStudioStack:
    """A running server; ``url``/``api_key`` are what clients need. ``stop()`` ends the process it started."""

    data_dir: str
    url: str = ""
    username: str = USERNAME
    password: str = field(default_factory=lambda: "pw-" + secrets.token_urlsafe(18))
    api_key: str = field(default_factory=lambda: secrets.token_hex(20))
    pids: dict = field(default_factory=dict)
    owns_data_dir: bool = False

    def env(self) -> dict:
        return {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY": self.api_key}

    @classmethod
    def start(cls, data_dir: str | Path | None = None, *, port: int | None = None, timeout: float = 600.0,
              from_template: bool = True) -> "LabelStudioStack":
        """Start Label Studio on a free loopback port (or ``port``) with an admin user and a legacy API token.

        A ``data_dir`` an earlier server used keeps its projects and admin (``credentials.json`` beside the
        database). A new one is copied from :func:`template` when ``from_template`` (seconds instead of a minute of
        migrations).

        Raises:
            RuntimeError: not installed, or the server did not answer in ``timeout`` (the log's tail says why).
        """
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        owns = data_dir is None
        data = Path(data_dir or tempfile.mkdtemp(prefix="labelstudio-")).resolve()
        data.mkdir(parents=True, exist_ok=True)
        stack = cls(data_dir=str(data), owns_data_dir=owns)
        credentials = data / "credentials.json"
        if credentials.is_file():
            known = json.loads(credentials.read_text(encoding="utf-8"))
            stack.username, stack.password, stack.api_key = known["username"], known["password"], known["api_key"]
        elif not (data / "label_studio.sqlite3").exists() and from_template:
            source = template()
            for entry in source.iterdir():
                if entry.name != "ready":
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, data / entry.name)
        try:
            stack._start(port or free_port(), timeout)
        except BaseException:
            stack.stop()
            raise
        write_private(credentials, json.dumps({"username": stack.username, "password": stack.password,
                                               "api_key": stack.api_key}))
        return stack

    def _start(self, port: int, timeout: float) -> None:
        data = Path(self.data_dir)
        log = open(data / "labelstudio.log", "ab")
        proc = subprocess.Popen([str(_binary()), "start", "--data-dir", str(data), "--no-browser",
                                 "--internal-host", "127.0.0.1", "--port", str(port), "--username", self.username,
                                 "--password", self.password, "--user-token", self.api_key,
                                 "--enable-legacy-api-token"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_environment(data), cwd=data, start_new_session=True)
        log.close()
        self.pids["labelstudio"] = proc.pid
        self.url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                tail = (data / "labelstudio.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"label-studio exited with code {proc.returncode}: {tail}")
            return self.answering(timeout=5)

        _wait(ready, timeout, f"Label Studio at {self.url} (log: {data / 'labelstudio.log'})")

    def answering(self, timeout: float = 5.0) -> bool:
        """Whether the server at :attr:`url` accepts :attr:`api_key` now."""
        import httpx

        try:
            return httpx.get(self.url + "/api/projects/", params={"page_size": 1}, timeout=timeout,
                             headers={"Authorization": f"Token {self.api_key}"}).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL), and remove a temporary data folder."""
        for pid in self.pids.values():
            _kill_group(pid)
        self.pids = {}
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def save(self, path: str | Path) -> None:
        """Write the state (URL, credentials, pid) to ``path``, readable by its owner only (mode 0600)."""
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LabelStudioStack":
        return cls(**json.loads(Path(path).read_text()))
