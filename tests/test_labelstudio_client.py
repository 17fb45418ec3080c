"""annotate/labelstudio/client.py against a real Label Studio server: the endpoints the loop uses, and the errors."""

from __future__ import annotations

import pytest

from annotate.labelstudio.client import LabelStudio, LabelStudioRefused, LabelStudioUnavailable
from annotate.labelstudio.config import build_config, parse_config

pytestmark = pytest.mark.labelstudio


def test_projects_tasks_predictions_and_model_versions(labelstudio_client):
    client = labelstudio_client
    project = client.create_project("client test", build_config(["a", "b"]))
    assert client.find_project("client test")["id"] == project["id"]
    config = parse_config(project["label_config"])
    tasks = [{"data": {"text": f"text {i}"}, "predictions": [{"model_version": "v1", "score": 0.5,
                                                              "result": config.result("a")}]} for i in range(2500)]
    ids = client.import_tasks(project["id"], tasks)
    assert len(ids) == 2500
    listed = client.tasks(project["id"])  # three pages of 1000
    assert len(listed) == 2500 and {t["data"]["text"] for t in listed} == {f"text {i}" for i in range(2500)}
    assert listed[0]["predictions"][0]["model_version"] == "v1"
    assert client.import_predictions(project["id"], [{"task": ids[0], "result": config.result("b"), "score": 0.9,
                                                      "model_version": "v2"}]) == 1
    assert client.model_versions(project["id"]) == {"v1": 2500, "v2": 1}
    assert client.delete_model_version(project["id"], "v1") == 2500
    client.update_project(project["id"], model_version="v2")
    assert client.project(project["id"])["model_version"] == "v2"


def test_users_annotations_and_views(labelstudio_client):
    client = labelstudio_client
    project = client.create_project("views test", build_config(["a", "b"]))
    task = client.import_tasks(project["id"], [{"data": {"text": "one"}}])[0]
    user = client.user_id("auto-accept")
    assert client.user_id("auto-accept") == user  # found, not created again
    annotation = client.create_annotation(task, parse_config(project["label_config"]).result("a"), completed_by=user)
    assert annotation["completed_by"] == user
    client.delete_annotation(annotation["id"])
    assert client.tasks(project["id"])[0]["annotations"] == []
    first = client.ensure_view(project["id"], "pending", ordering=["tasks:predictions_score"])
    assert client.ensure_view(project["id"], "pending", ordering=["-tasks:predictions_score"]) == first


def test_a_wrong_token_is_refused_and_nothing_listening_is_unavailable(labelstudio):
    with pytest.raises(LabelStudioRefused, match="refused the API token"):
        LabelStudio(labelstudio.url, "0" * 40)
    with pytest.raises(LabelStudioUnavailable, match="not reachable"):
        LabelStudio("http://127.0.0.1:9", "x", attempts=1)


def test_a_refused_request_says_what_label_studio_said(labelstudio_client):
    with pytest.raises(LabelStudioRefused, match="at least 3 characters"):
        labelstudio_client.create_project("ab", build_config(["a", "b"]))
