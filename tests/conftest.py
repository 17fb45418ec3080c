"""Shared fixtures: real models built in the session, the shared data folder, a live HTTP server."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]
NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}


def shared_data_dir() -> Path:
    """``$ZSC_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("ZSC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "classification").is_dir():
        pytest.skip(f"shared data folder not found at {path} (set ZSC_SHARED_DATA to the folder holding nli/ and classification/)")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zsc-cache")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from service.sources import ModelSourceError, packaged_minilm_dir

    try:
        return packaged_minilm_dir()
    except ModelSourceError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, 32-wide BERT NLI classifier with random weights and MiniLM's real uncased vocab.

    ``model_max_length`` is 48 so that premise-only truncation happens on ordinary sentences.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-nli")
    tokenizer = BertTokenizerFast(vocab_file=str(minilm_dir / "vocab.txt"), do_lower_case=True, model_max_length=48)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3, id2label=NLI_LABELS,
                        label2id={v: k for k, v in NLI_LABELS.items()})
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # larger logits than the default init, so the label order is not a coin toss
        model.classifier.weight.mul_(20)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def minilm_random_head_dir(tmp_path_factory, minilm_dir) -> Path:
    """The packaged all-MiniLM-L6-v2 encoder with a seeded random 3-way NLI head (entailment at index 0)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(1)
    labels = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}  # an order unlike the teacher's, upper case
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3, id2label=labels,
                                                          label2id={v: k for k, v in labels.items()})
    path = tmp_path_factory.mktemp("minilm-random-head")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server on a loopback port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def wait_ready(self, timeout: float = 120) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.get(self.url + "/ready")
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


# --- Argilla pre-annotation loop (issue #5) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def topics_example():
    """The example pool (``examples/topics_120.jsonl``) as the loop takes it: ``([(content id, text)], {content id:
    gold label})``."""
    import json

    from annotate.tools import record_id

    rows = [json.loads(line) for line in (REPO / "examples/topics_120.jsonl").read_text().splitlines()]
    ids = [record_id(r["text"], None) for r in rows]
    return [(rid, r["text"]) for rid, r in zip(ids, rows)], {rid: r["label"] for rid, r in zip(ids, rows)}


@pytest.fixture(scope="session")
def argilla_stack(tmp_path_factory):
    """A real Argilla 2.8 server (+ worker, Redis, osmem search engine) on loopback ports for the session.

    Skips when the stack is not installed (``bash scripts/setup.sh`` installs it); under CI (``CI`` set) a
    missing stack is a failure instead, so a green CI cannot hide it.
    """
    from tests.argilla_stack import ArgillaStack, missing

    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Argilla stack not installed in CI: {reason}")
        pytest.skip(f"Argilla stack not available: {reason}")
    stack = ArgillaStack.start(tmp_path_factory.mktemp("argilla-stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def zeroshot_service(cache_dir):
    """The real service on the embedded default models (ONNX Runtime), requests served by NLI unless they ask."""
    from service.app import create_app
    from service.config import Settings

    settings = Settings(model="default", method="nli", engine="onnxruntime", cache_dir=cache_dir)  # tests pin the method
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


# --- Label Studio ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelstudio(tmp_path_factory):
    """A real Label Studio 1.23 server (SQLite, loopback port) for a test module, started from a migrated template
    folder (:func:`annotate.labelstudio.stack.template`: migrations once per machine, seconds a server after that).

    Skips when it is not installed (``bash scripts/setup.sh`` installs it); under CI (``CI`` set) a missing server is a
    failure instead.
    """
    from annotate.labelstudio.stack import LabelStudioStack, missing

    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Label Studio not installed in CI: {reason}")
        pytest.skip(f"Label Studio not available: {reason}")
    stack = LabelStudioStack.start(tmp_path_factory.mktemp("labelstudio"))
    yield stack
    stack.stop()


@pytest.fixture
def labelstudio_client(labelstudio):
    from annotate.labelstudio.client import LabelStudio

    client = LabelStudio(labelstudio.url, labelstudio.api_key)
    yield client
    client.close()
