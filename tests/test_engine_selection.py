"""engine=auto counts cost and remembers its measurement: engines over the start-up / memory budget are not timed
and not chosen; a second start reuses the measurement and builds one engine per model; --remeasure, a changed key
(threads) and a budget under which an untimed engine would fit measure again; /info and the log say which engine
serves, why and under which licence. Real engines and real child processes throughout."""

import datetime as dt
import importlib.metadata
import json
import logging
import subprocess
import sys

import pytest

import service.engines as engines
from service.config import Settings
from service.engines import Budget, create_engine, selection, timing_shapes
from service.loader import load_model
from service.sources import resolve_model

UNBOUNDED = dict(max_start_s=None, max_rss_mb=None)


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
    """One service start's model load (the NLI role), as ``python -m service`` does it; no budget unless given."""
    return load_model(Settings(model=str(model_dir), embedding_model="none", engine="auto", batch_size=4,
                               cache_dir=cache_dir, **{**UNBOUNDED, **settings}))


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
    assert record["rows_per_s"] == measured["rows_per_s"] and record["key"]["threads"] >= 1
    assert set(record["costs"]) == {"deepsparse", "onnxruntime"}  # the choice is made from these at every start
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
    options = dict(cache_dir=tmp_path, batch_size=4, max_length=48)  # no budget: speed alone
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
    base = dict(task="sequence-classification", threads=2, shapes=((32, 24), (16, 48)), compile="startup", buckets=12)
    key = selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base)
    assert key == selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base)
    assert key["cpu"] and key["engines"]["onnxruntime"] and key["graphs"]["onnxruntime"]
    changed = [selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **{**base, "threads": 1}),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"},
                                       **{**base, "shapes": ((8, 24),)}),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "dynamic"}, **base),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **{**base, "compile": "lazy"}),
               selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **{**base, "buckets": 22})]
    graph.write_bytes(b"graph two")  # same path, new content
    changed.append(selection.selection_key({"onnxruntime": graph}, {"onnxruntime": "qdq"}, **base))
    digests = {selection.key_digest(k) for k in [key, *changed]}
    assert len(digests) == 7
    # a record stored under a digest but holding another key (e.g. a hand-edited file) is not trusted
    selection.save_record(tmp_path, key, {"costs": {"onnxruntime": {}}, "rows_per_s": {}})
    assert selection.load_record(tmp_path, key)["costs"] == {"onnxruntime": {}}
    path = selection.record_path(tmp_path, key)
    path.write_text(json.dumps({"costs": {}, "key": changed[0]}))
    assert selection.load_record(tmp_path, key) is None


def test_remeasure_is_a_cli_option_and_a_setting(monkeypatch):
    monkeypatch.setenv("ZSC_REMEASURE", "true")
    assert Settings().remeasure is True
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True)
    assert "--remeasure" in out.stdout


def cost(start_s, rss_mb):
    return {"projected_start_s": start_s, "projected_rss_mb": rss_mb}


def test_choose_takes_the_fastest_engine_within_the_budget():
    record = {"costs": {"onnxruntime": cost(1.0, 80), "deepsparse": cost(70.0, 1200)},
              "rows_per_s": {"onnxruntime": 180.0, "deepsparse": 210.0}}
    # unbounded: speed alone
    assert selection.choose(record, Budget())[:2] == ("deepsparse", "the fastest within the budget (rows/s: "
                                                                    "DeepSparse 210.0, ONNX Runtime 180.0)")
    # DeepSparse's start-up or its memory over budget: ONNX Runtime, saying why
    for budget in (Budget(start_s=15), Budget(rss_mb=500)):
        chosen, why, stale = selection.choose(record, budget)
        assert (chosen, stale) == ("onnxruntime", False)
        assert why.startswith("the only engine within the budget (DeepSparse over budget (projected")
    # nothing fits: the least memory, said so
    chosen, why, _ = selection.choose(record, Budget(rss_mb=10))
    assert chosen == "onnxruntime" and why.startswith("no engine fits the budget")
    # both fit but one was never timed (a record measured under a smaller budget): measure again
    untimed = {**record, "rows_per_s": {}}
    assert selection.choose(untimed, Budget()) == (None, "", True)
    assert selection.choose(untimed, Budget(start_s=15))[0] == "onnxruntime"
    assert selection.choose({"costs": {}}, Budget())[0] is None


def test_budget_is_shared_by_the_models():
    rss = selection.rss_mb()
    one = selection.service_budget(15, 5000, models=1, models_left=1)
    first, second = (selection.service_budget(15, 5000, models=2, models_left=n) for n in (2, 1))
    assert one.rss_mb == pytest.approx(5000 - rss, abs=50) and first.rss_mb == pytest.approx((5000 - rss) / 2, abs=50)
    assert second.rss_mb == pytest.approx(5000 - rss, abs=50)  # what the first model left, after its own memory
    assert (one.start_s, first.start_s, second.start_s) == (15, 7.5, 7.5)
    assert selection.service_budget(None, None, models=2, models_left=2) == Budget()


def test_a_process_holding_more_than_the_budget_gets_the_service_share_not_a_negative_one():
    """A training process that already holds more than ZSC_MAX_RSS_MB (a student in training) once got a negative
    memory budget for its teacher; embedded, the share is the service's own; in the service it never goes below 0."""
    held = bytearray(64 << 20)  # 64 MiB more than this process held before
    held[::4096] = b"x" * len(held[::4096])
    small = selection.rss_mb() - 10  # a budget this process already exceeds
    assert selection.service_budget(15, small, models=1, models_left=1).rss_mb == 0.0
    embedded = selection.service_budget(15, small, models=2, models_left=1, embedded=True)
    assert embedded.rss_mb == pytest.approx(small / 2) and embedded.start_s == 7.5
    del held


def test_timing_shapes_include_part_filled_batches():
    shapes = timing_shapes(32, 512)
    assert {rows for rows, _ in shapes} > {32}  # real requests end with part-filled batches
    assert all(1 <= rows <= 32 and tokens <= 512 for rows, tokens in shapes)
    assert max(tokens for _, tokens in timing_shapes(4, 48)) == 48 and max(r for r, _ in timing_shapes(4, 48)) == 4


@pytest.mark.slow
def test_an_engine_over_budget_is_neither_timed_nor_chosen(tiny_model_dir, tmp_path):
    pytest.importorskip("deepsparse")
    source = resolve_model(str(tiny_model_dir))
    options = dict(batch_size=4, max_length=48)
    free = create_engine("auto", source, cache_dir=tmp_path / "free", **options)
    free.close()
    costs = free.selection["costs"]
    assert set(free.selection["rows_per_s"]) == {"deepsparse", "onnxruntime"}  # unbounded: both fit, both timed
    assert costs["deepsparse"]["buckets"] == 6  # (1, 4) rows x (16, 32, 48) tokens
    # compiling every bucket at start-up costs more than one ONNX Runtime session, and more memory
    assert costs["deepsparse"]["projected_start_s"] > costs["onnxruntime"]["projected_start_s"]
    assert costs["deepsparse"]["projected_rss_mb"] > costs["onnxruntime"]["projected_rss_mb"]
    budget = Budget(start_s=(costs["deepsparse"]["projected_start_s"] + costs["onnxruntime"]["projected_start_s"]) / 2)

    tight = create_engine("auto", source, cache_dir=tmp_path / "tight", budget=budget, **options)
    tight.close()
    assert tight.name == "onnxruntime" and tight.selection["measurement"] == "measured"
    assert tight.selection["rows_per_s"] == {}  # only one fits: nothing timed
    assert set(tight.selection["costs"]) == {"deepsparse", "onnxruntime"}
    assert "DeepSparse over budget (projected warm start" in tight.why and tight.why.startswith("auto: the only")
    again = create_engine("auto", source, cache_dir=tmp_path / "tight", budget=budget, **options)
    again.close()
    assert again.selection["measurement"] == "reused" and again.name == "onnxruntime"
    # a larger budget, under which the untimed DeepSparse fits: measured again, both timed
    wide = create_engine("auto", source, cache_dir=tmp_path / "tight", budget=Budget(), **options)
    wide.close()
    assert wide.selection["measurement"] == "measured" and set(wide.selection["rows_per_s"]) == {"deepsparse",
                                                                                                  "onnxruntime"}


@pytest.mark.slow
def test_info_and_log_say_which_engine_why_and_under_which_licence(tiny_model_dir, tmp_path, caplog, monkeypatch):
    pytest.importorskip("deepsparse")
    monkeypatch.setattr(engines, "_LICENCE_WARNED", set())
    with caplog.at_level(logging.INFO, logger="service.engines"):
        ort = load_model(Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime",
                                  cache_dir=tmp_path))
        ds = [load_model(Settings(model=str(tiny_model_dir), embedding_model="none", engine="deepsparse",
                                  deepsparse_compile="lazy", cache_dir=tmp_path)) for _ in range(2)]
    for loaded in (ort, *ds):
        loaded.close()
    assert ort.info["engine_licence"] == importlib.metadata.metadata("onnxruntime")["License"]
    assert ort.info["engine_why"] == "named by the engine setting (onnxruntime)"
    assert ds[0].info["engine"] == "deepsparse" and "not for production use" in ds[0].info["engine_licence"]
    assert ds[0].info["engine_licence"].startswith(importlib.metadata.metadata("deepsparse")["License"])
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("engine for ") for m in lines) == 3  # one start-up line per engine built
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "service.engines"]
    assert len(warnings) == 1 and "not for production use" in warnings[0]  # one line, not one per model
    assert not any("production" in m for m in lines if "ONNX Runtime" in m)
