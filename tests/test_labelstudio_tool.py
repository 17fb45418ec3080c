"""annotate/labelstudio/tool.py against a real Label Studio server: how tasks, predictions and annotations become the
loop's records, and how the loop's writes land."""

from __future__ import annotations

import pytest

from annotate.labelstudio.tool import LabelStudioTool, open_project
from annotate.tools import AUTO_ACCEPT_USER, CERTIFY, NewRecord

pytestmark = pytest.mark.labelstudio
LABELS = ["sports", "business"]


@pytest.fixture
def tool(labelstudio_client, request):
    return open_project(labelstudio_client, f"tool {request.node.name[:40]}", labels=LABELS, create=True)


def test_records_read_suggestions_human_decisions_skips_and_bulk_acceptances(tool, labelstudio_client):
    added = tool.add([NewRecord(f"id{i}", f"text {i}", LABELS[i % 2], 0.5 + i / 10) for i in range(4)], "v1")
    assert added == 4
    assert labelstudio_client.project(tool.id)["model_version"] == "v1"
    records = {r.id: r for r in tool.records()}
    assert records["id1"].suggestion == "business" and records["id1"].score == pytest.approx(0.6)
    assert all(r.pending and r.agent == "v1" for r in records.values())
    client = labelstudio_client
    client.create_annotation(records["id0"].key, tool.config.result("business"))  # a person disagrees
    client.request("POST", f"/api/tasks/{records['id1'].key}/annotations/",
                   json={"result": [], "was_cancelled": True})  # skipped: no label fits
    assert tool.accept({records["id2"].key: "sports", records["id0"].key: "sports"}) == 1  # never over a person's
    records = {r.id: r for r in tool.records()}
    assert (records["id0"].status, records["id0"].human) == ("submitted", "business")
    assert records["id0"].annotator == next(u["email"] for u in client.users() if u["id"] == client.request(
        "GET", "/api/current-user/whoami")["id"])  # the person's email, not a user id
    assert records["id1"].status == "discarded"
    assert records["id2"].accepted and records["id2"].accepted_label == "sports" and not records["id2"].pending
    assert records["id3"].pending
    annotations = client.tasks(tool.id)
    auto = client.user_id(AUTO_ACCEPT_USER)
    assert sum(a["completed_by"] == auto for t in annotations for a in t["annotations"]) == 1
    assert tool.withdraw([records["id2"].key]) == 1
    assert {r.id: r for r in tool.records()}["id2"].pending


def test_add_splits_a_push_into_requests_and_creates_every_task_once_in_order(tool, labelstudio_client):
    tool.import_batch = 2  # 5 records: requests of 2, 2 and 1, one in flight while the next is encoded
    records = [NewRecord(f"id{i}", f"text {i}", LABELS[i % 2], 0.5 + i / 20) for i in range(5)]
    assert tool.add(records, "v2") == 5
    tasks = sorted(labelstudio_client.tasks(tool.id), key=lambda t: t["id"])
    assert [t["data"]["zsp_id"] for t in tasks] == [r.id for r in records]
    assert [len(t["predictions"]) for t in tasks] == [1] * 5
    assert labelstudio_client.project(tool.id)["model_version"] == "v2"
    assert [r.suggestion for r in sorted(tool.records(), key=lambda r: r.key)] == [r.suggestion for r in records]


def test_new_suggestions_replace_the_old_predictions_under_the_new_version(tool, labelstudio_client):
    tool.add([NewRecord(f"id{i}", f"text {i}", "sports", 0.6) for i in range(3)], "v1")
    keys = [r.key for r in tool.records()]
    assert tool.write_suggestions({keys[0]: ("business", 0.9), keys[1]: ("sports", 0.7)}, "v2") == 2
    by_key = {r.key: r for r in tool.records()}
    assert (by_key[keys[0]].suggestion, by_key[keys[0]].score, by_key[keys[0]].agent) == ("business", 0.9, "v2")
    assert labelstudio_client.project(tool.id)["model_version"] == "v2"
    assert labelstudio_client.model_versions(tool.id) == {"v2": 2, "v1": 1}  # one prediction a task


def test_flags_are_task_data_and_links_open_data_manager_tabs(tool, labelstudio_client):
    tool.add([NewRecord(f"id{i}", f"text {i}", "sports", 0.6) for i in range(2)], "v1")
    keys = [r.key for r in tool.records()]
    assert tool.flag(CERTIFY, {keys[0]: 1}) == 1
    assert tool.flag(CERTIFY, {keys[0]: 1}) == 0  # unchanged: nothing written
    records = {r.key: r for r in tool.records()}
    assert records[keys[0]].flags == {CERTIFY: 1} and records[keys[1]].flags == {}
    assert records[keys[0]].text == "text 0"  # the rest of the task data kept
    assert tool.flag(CERTIFY, {keys[0]: None}) == 1 and not {r.key: r for r in tool.records()}[keys[0]].flags
    for view in ("pending", "certify", "suspects"):
        assert tool.link(view).startswith(f"{labelstudio_client.url}/projects/{tool.id}/data?tab=")
    assert "tab=" in tool.link("validate", "sports")
    with pytest.raises(ValueError, match="unknown view"):
        tool.link("everything")


def test_open_project_refuses_other_labels_and_a_missing_project(labelstudio_client, tool):
    with pytest.raises(ValueError, match="pass the same labels in the same order"):
        open_project(labelstudio_client, tool.project["title"], labels=["business", "sports"])
    with pytest.raises(LookupError, match="push to it first"):
        open_project(labelstudio_client, "no such project")
    assert isinstance(open_project(labelstudio_client, tool.project["title"]), LabelStudioTool)
