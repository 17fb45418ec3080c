"""A Label Studio project as the loop's annotation tool (:class:`annotate.tools.AnnotationTool`).

How the loop's notions map onto Label Studio:

* a record is a task; its text is the label config's ``<Text>`` field; the loop's content id is the task data field
  ``zsp_id`` (tasks imported without one get the id of their text);
* a suggestion is a prediction (``result``, ``score``, ``model_version`` = the agent); the project's
  ``model_version`` names the current one, so Label Studio's uncertainty sampling (``/next``) serves the least
  confident pending task of the newest head;
* a person's decision is an annotation (a skipped task, ``was_cancelled``, counts as discarded); a suggestion
  accepted in bulk is an annotation of the user ``auto-accept`` (created once, no password), never written on a task
  that has a person's annotation;
* flags are task data fields (``certify`` = 1, ``suspect`` = score) that Data Manager tabs filter and sort on; the
  links open those tabs (created or updated by :meth:`LabelStudioTool.link`).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from annotate.labelstudio.client import LabelStudio
from annotate.labelstudio.config import LabelConfig, parse_config
from annotate.tools import AUTO_ACCEPT_USER, CERTIFY, SUSPECT, NewRecord, ToolRecord

logger = logging.getLogger(__name__)
ID_FIELD = "zsp_id"


class LabelStudioTool:
    """One Label Studio project.

    Args:
        client: the REST client.
        project: the project (as ``GET /api/projects/<id>/`` answers).
        concurrency: requests in flight for per-task writes (annotations, flags).
        import_batch: tasks a request when records are added.

    Raises:
        annotate.labelstudio.config.ConfigError: the project is not a text classification project.
    """

    def __init__(self, client: LabelStudio, project: dict, *, concurrency: int = 4, import_batch: int = 1000) -> None:
        self.client = client
        self.project = project
        self.id = int(project["id"])
        self.config: LabelConfig = parse_config(project["label_config"])
        self.name = f"Label Studio project {project.get('title')!r} (id {self.id})"
        self.labels = list(self.config.labels)
        self.multi_label = self.config.multi_label
        self.concurrency = concurrency
        self.import_batch = import_batch
        self._tasks: dict[int, dict] = {}
        self._auto_user: int | None = None
        self._empty = False  # known to hold no task (created by this process, nothing added since)

    # reading --------------------------------------------------------------------------------------------------
    def auto_user(self) -> int:
        """The id of the ``auto-accept`` user (created on first use)."""
        if self._auto_user is None:
            self._auto_user = self.client.user_id(AUTO_ACCEPT_USER)
        return self._auto_user

    def records(self) -> list[ToolRecord]:
        from annotate.tools import record_id

        if self._empty:
            return []

        tasks = self.client.tasks(self.id)
        self._tasks = {int(t["id"]): t for t in tasks}
        users = self.client.users()
        if self._auto_user is None:
            self._auto_user = self.client.user_id(AUTO_ACCEPT_USER, users)
        auto = self._auto_user
        names = {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in users}
        current = self.client.project(self.id).get("model_version") or None
        records = []
        for task in tasks:
            data = task.get("data", {})
            text = str(data.get(self.config.text_field, ""))
            record = ToolRecord(id=str(data.get(ID_FIELD) or record_id(text, None)), key=int(task["id"]), text=text,
                                flags={k: data[k] for k in (CERTIFY, SUSPECT) if data.get(k) is not None})
            predictions = task.get("predictions") or []
            chosen = [p for p in predictions if p.get("model_version") == current] or predictions
            if chosen:
                prediction = max(chosen, key=lambda p: p.get("id", 0))
                labels = self.config.chosen(prediction.get("result") or [])
                record.suggestion = labels[0] if labels else None
                record.score = float(prediction["score"]) if prediction.get("score") is not None else None
                record.agent = prediction.get("model_version")
            for annotation in sorted(task.get("annotations") or [], key=lambda a: a.get("id", 0)):
                by = annotation.get("completed_by")
                by = by.get("id") if isinstance(by, dict) else by
                chosen_labels = self.config.chosen(annotation.get("result") or [])
                if by == auto:
                    record.accepted = True
                    record.accepted_label = chosen_labels[0] if chosen_labels else None
                elif annotation.get("was_cancelled") or not chosen_labels:
                    record.status = record.status or "discarded"
                    record.annotator = record.annotator or names.get(by, str(by))
                elif record.status != "submitted":
                    record.status, record.human, record.annotator = "submitted", chosen_labels[0], \
                        names.get(by, str(by))
            if record.status is not None:
                record.accepted = False  # a person's decision wins: the bulk acceptance no longer stands for it
            records.append(record)
        return records

    # writing --------------------------------------------------------------------------------------------------
    def _prediction(self, task_id: int, label: str, score: float, agent: str) -> dict:
        return {"task": task_id, "result": self.config.result(label), "score": round(float(score), 6),
                "model_version": agent}

    def add(self, records: Sequence[NewRecord], agent: str) -> int:
        """Import the records as tasks with one prediction each, :attr:`import_batch` tasks a request, one request
        in flight while the next is built and encoded (Label Studio on SQLite takes concurrent imports more
        slowly than serial ones); then ``agent`` becomes the project's model version (Label Studio accepts only a
        version some prediction carries)."""

        def body(chunk: Sequence[NewRecord]) -> bytes:
            return json.dumps([{"data": {self.config.text_field: r.text, ID_FIELD: r.id},
                                "predictions": [{"model_version": agent, "score": round(float(r.score), 6),
                                                 "result": self.config.result(r.suggestion)}]} for r in chunk]
                              ).encode("utf-8")

        self._empty = False
        created, in_flight = 0, None
        with ThreadPoolExecutor(max_workers=1) as sender:
            for start in range(0, len(records), self.import_batch):
                chunk = records[start:start + self.import_batch]
                payload = body(chunk)
                if in_flight is not None:
                    created += in_flight.result()
                in_flight = sender.submit(self._import, payload, len(chunk))
            if in_flight is not None:
                created += in_flight.result()
        if records:
            self._use_version(agent)
        return created

    def _import(self, payload: bytes, count: int) -> int:
        ids = self.client.import_tasks(self.id, content=payload)
        return len(ids) if ids else count

    def _use_version(self, agent: str) -> None:
        """Make ``agent`` the project's model version (one request; setting the current one again is harmless)."""
        self.client.update_project(self.id, model_version=agent)

    def write_suggestions(self, suggestions: dict, agent: str, *, replace_all: bool = False) -> int:
        """Delete the predictions of these tasks, import their new ones under ``agent``, and make ``agent`` the
        project's model version (uncertainty sampling then orders by it)."""
        keys = list(suggestions)
        for start in range(0, len(keys), 1000):
            self.client.request("POST", "/api/dm/actions", params={"id": "delete_tasks_predictions",
                                                                   "project": self.id},
                                json={"selectedItems": {"all": False, "included": keys[start:start + 1000]}})
        predictions = [self._prediction(k, *suggestions[k], agent) for k in keys]
        written = sum(self.client.import_predictions(self.id, predictions[i:i + 1000])
                      for i in range(0, len(predictions), 1000))
        self._use_version(agent)
        return written

    def _each(self, function, items) -> int:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return sum(1 for _ in pool.map(function, items))

    def accept(self, labels: dict) -> int:
        """Annotations of the ``auto-accept`` user; a task that holds any annotation now (read again first: a person
        may have answered since the records were read) is left alone."""
        auto = self.auto_user()
        self._tasks = {int(t["id"]): t for t in self.client.tasks(self.id)}
        todo = [(k, v) for k, v in labels.items() if not self._has_annotation(k)]
        return self._each(lambda kv: self.client.create_annotation(kv[0], self.config.result(kv[1]),
                                                                   completed_by=auto), todo)

    def _has_annotation(self, key) -> bool:
        task = self._tasks.get(int(key))
        return bool(task and task.get("annotations"))

    def withdraw(self, keys: Sequence) -> int:
        auto = self.auto_user()
        self._tasks = {int(t["id"]): t for t in self.client.tasks(self.id)}
        ids = []
        for key in keys:
            for annotation in (self._tasks.get(int(key)) or {}).get("annotations") or []:
                by = annotation.get("completed_by")
                if (by.get("id") if isinstance(by, dict) else by) == auto:
                    ids.append(annotation["id"])
        return self._each(self.client.delete_annotation, ids)

    def flag(self, name: str, values: dict) -> int:
        def one(item):
            key, value = item
            data = dict((self._tasks.get(int(key)) or {}).get("data") or {})
            if data.get(name) == value:
                return
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value
            self.client.request("PATCH", f"/api/tasks/{int(key)}/", json={"data": data})
            self._tasks.setdefault(int(key), {})["data"] = data

        changed = [(k, v) for k, v in values.items()
                   if ((self._tasks.get(int(k)) or {}).get("data") or {}).get(name) != v]
        return self._each(one, changed)

    # links ------------------------------------------------------------------------------------------------------
    def link(self, view: str, label: str | None = None) -> str:
        """A Data Manager tab of the project (created or updated): ``pending`` (no annotation, lowest prediction
        score first), ``certify`` (the certification sample not yet reviewed), ``suspects`` (most suspect first),
        ``validate`` (``label``'s pending tasks, highest score first).

        Raises:
            ValueError: an unknown view.
        """
        unannotated = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
        if view == "pending":
            tab = self.client.ensure_view(self.id, "pending: least confident first", filters=[unannotated],
                                          ordering=["tasks:predictions_score"])
        elif view == "certify":
            tab = self.client.ensure_view(self.id, "certification sample", filters=[
                unannotated, {"filter": f"filter:tasks:data.{CERTIFY}", "operator": "equal", "type": "Number",
                              "value": 1}], ordering=["-tasks:predictions_score"])
        elif view == "suspects":
            tab = self.client.ensure_view(self.id, "suspect labels: most suspect first", filters=[
                {"filter": f"filter:tasks:data.{SUSPECT}", "operator": "greater", "type": "Number", "value": 0}],
                ordering=[f"-tasks:data.{SUSPECT}"])
        elif view == "validate":
            tab = self.client.ensure_view(self.id, f"validate {label}: most confident first", filters=[
                unannotated, {"filter": "filter:tasks:predictions_results", "operator": "contains", "type": "String",
                              "value": str(label)}], ordering=["-tasks:predictions_score"])
        else:
            raise ValueError(f"unknown view {view!r}: pending, certify, suspects or validate")
        return f"{self.client.url}/projects/{self.id}/data?tab={tab}"


def open_project(client: LabelStudio, name: str, *, labels: list[str] | None = None, multi_label: bool = False,
                 create: bool = False, descriptions: dict | None = None, template: str | None = None
                 ) -> LabelStudioTool:
    """The project called ``name`` as a tool; with ``create``, made (text classification over ``labels``, uncertainty
    sampling) when absent.

    Raises:
        LookupError: no such project and ``create`` is false.
        ValueError: the project's labels or label mode differ from ``labels`` / ``multi_label``.
        annotate.labelstudio.config.ConfigError: the project is not a text classification project.
    """
    from annotate.labelstudio.config import build_config

    project = client.find_project(name)
    if project is None:
        if not create:
            raise LookupError(f"no Label Studio project called {name!r} at {client.url}: push to it first")
        project = client.create_project(name, build_config(labels, multi_label, descriptions),
                                        description=f"zero-shot suggestions ({template or 'zeroshot-preannotate'})",
                                        sampling="Uncertainty sampling")
        tool = LabelStudioTool(client, project)
        tool._empty = True  # created here: no task to read yet
    else:
        tool = LabelStudioTool(client, project)
    if labels is not None and (list(labels) != tool.labels or bool(multi_label) != tool.multi_label):
        raise ValueError(f"project {name!r} asks {tool.labels} ({'multi' if tool.multi_label else 'single'}-label), "
                         f"not {list(labels)}: pass the same labels in the same order, or another --dataset")
    return tool
