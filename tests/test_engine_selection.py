"""engine=auto remembers its measurement: a second start reuses it and builds one engine per model; --remeasure
and a changed key (threads) measure again. Real engines and real child processes throughout."""

import datetime as dt
import json
import subprocess
import sys

import pytest

import service.engines as engines
from service.config import Settings
from service.engines import create_engine, selection
from service.loader import load_model
from service.sources import resolve_model


@pytest.fixture
def builds(monkeypatch):
    """The engines built in this process, in order: the real ``_build``, wrapped to record its ``kind``.

    The timing child is a separate interpreter and does not see the wrapper, so only the serving process's
    builds are counted."""
    built: list[str] = []
    real = engines._build

    def counting(kind, *args, **kwargs):
        built.append(kind)
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(engines, "_build", counting)
    return built


def start(model_dir, cache_dir, **settings):
    """One service start's model load (the NLI role), as ``python -m service`` does it."""
    return load_model(Settings(model=str(model_dir), embedding_model="none", engine="auto", batch_size=4,
                               cache_dir=cache_dir, **settings))


@pytest.mark.slow
def test_second_start_reuses_the_measurement_and_builds_only_the_winner(tiny_model_dir, tmp_path, builds):
    pytest.importorskip("deepsparse")
    first = start(tiny_model_dir, tmp_path)
    measured = first.info["auto_selection"]
    first.close()
    assert measured["measurement"] == "measured" and measured["remeasure_forced"] is False
    assert set(measured["rows_per_s"]) == {"deepsparse", "onnxruntime"}  # both timed (in the child)
    assert measured["chosen"] == first.engine.name == max(measured["rows_per_s"], key=measured["rows_per_s"].get)
    assert dt.datetime.fromisoformat(measured["measured_at"]).tzinfo is not None
    record = json.loads(open(measured["record"]).read())
    assert record["chosen"] == measured["chosen"] and record["key"]["threads"] >= 1
    assert builds == [measured["chosen"]]  # the loser was never built in the serving process

    builds.clear()
    second = start(tiny_model_dir, tmp_path)
    reused = second.engine.describe()["auto_selection"]
    second.close()
    assert reused["measurement"] == "reused"
    assert reused["measured_at"] == measured["measured_at"] and reused["rows_per_s"] == measured["rows_per_s"]
    assert reused["key"] == measured["key"] and second.engine.name == measured["chosen"]
    assert builds == [measured["chosen"]]  # one engine for the model, no timing


@pytest.mark.slow
def test_remeasure_forces_a_new_measurement(tiny_model_dir, tmp_path, builds):
    pytest.importorskip("deepsparse")
    start(tiny_model_dir, tmp_path).close()
    before = json.loads(next((tmp_path / selection.SELECTION_DIR).glob("*.json")).read_text())
    again = start(tiny_model_dir, tmp_path, remeasure=True)
    info = again.info["auto_selection"]
    again.close()
    assert info["measurement"] == "measured" and info["remeasure_forced"] is True
    after = json.loads(open(info["record"]).read())
    assert after["key"] == before["key"]  # same key, measured again and stored over the old record
    assert (after["measured_at"], after["measure_seconds"]) != (before["measured_at"], before["measure_seconds"])


@pytest.mark.slow
def test_a_changed_key_measures_again(tiny_model_dir, tmp_path):
    pytest.importorskip("deepsparse")
    source = resolve_model(str(tiny_model_dir))
    options = dict(cache_dir=tmp_path, batch_size=4, max_length=48)
    one = create_engine("auto", source, num_threads=1, **options)
    two = create_engine("auto", source, num_threads=2, **options)
    again = create_engine("auto", source, num_threads=1, **options)
    for engine in (one, two, again):
        engine.close()
    assert one.selection["measurement"] == two.selection["measurement"] == "measured"
    assert one.selection["key"] != two.selection["key"]
    assert again.selection["measurement"] == "reused" and again.selection["key"] == one.selection["key"]
    assert len(list((tmp_path / selection.SELECTION_DIR).glob("*.json"))) == 2


def test_the_key_covers_what_decides_the_choice(tmp_path):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"graph one")
    base = dict(task="sequence-classification", threads=2, batch_rows=32, seq_lens=(24, 48))
    key = selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base)
    assert key == selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base)
    assert key["cpu"] and key["engines"]["onnxruntime"] and key["graphs"]["onnxruntime"]
    changed = [selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **{**base, "threads": 1}),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **{**base, "batch_rows": 8}),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "dynamic"}, **base)]
    graph.write_bytes(b"graph two")  # same path, new content
    changed.append(selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base))
    digests = {selection.key_digest(k) for k in [key, *changed]}
    assert len(digests) == 5
    # a record stored under a digest but holding another key (e.g. a hand-edited file) is not trusted
    selection.save_record(tmp_path, key, {"chosen": "onnxruntime", "rows_per_s": {}})
    assert selection.load_record(tmp_path, key)["chosen"] == "onnxruntime"
    path = selection.record_path(tmp_path, key)
    path.write_text(json.dumps({"chosen": "onnxruntime", "key": changed[0]}))
    assert selection.load_record(tmp_path, key) is None


def test_remeasure_is_a_cli_option_and_a_setting(monkeypatch):
    monkeypatch.setenv("ZSC_REMEASURE", "true")
    assert Settings().remeasure is True
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True)
    assert "--remeasure" in out.stdout
