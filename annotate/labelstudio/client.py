"""Label Studio's REST API, the endpoints the loop uses, over httpx with retries (tenacity).

Authentication: a legacy API token (``Authorization: Token <key>``; ``label-studio start --enable-legacy-api-token``,
or the token shown under Account & Settings when legacy tokens are on). Transient failures (connection errors, 5xx,
429) are retried with exponential backoff; a 401/403 or a refused request is raised at once with Label Studio's
message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import httpx

logger = logging.getLogger(__name__)


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be reached (after retries)."""


class LabelStudioRefused(RuntimeError):
    """Label Studio answered, and refused the request (the message is its own)."""


class _Transient(RuntimeError):
    pass


class LabelStudio:
    """A client of one Label Studio server.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8080``.
        token: a legacy API token.
        timeout: seconds for one request (imports of thousands of tasks take a few).
        attempts: tries of a request that fails transiently.

    Raises:
        LabelStudioUnavailable: nothing answers at ``url`` (checked at once).
        LabelStudioRefused: the token is refused.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 300.0, attempts: int = 5) -> None:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {token}"}, timeout=timeout)
        self._retrying = Retrying(retry=retry_if_exception_type((httpx.TransportError, _Transient)),
                                  stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.3, max=10),
                                  reraise=True)
        self.request("GET", "/api/projects/", params={"page_size": 1, "include": "id"})

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs):
        """One API call (retried while transient); its JSON, or ``None`` for an empty answer.

        Raises:
            LabelStudioUnavailable: still failing after the retries.
            LabelStudioRefused: a 4xx answer (its message, and what was asked).
        """
        def call():
            response = self._client.request(method, path, **kwargs)
            if response.status_code == 429 or response.status_code >= 500:
                raise _Transient(f"{method} {path}: HTTP {response.status_code}")
            return response

        try:
            response = self._retrying(call)
        except (httpx.TransportError, _Transient) as exc:
            raise LabelStudioUnavailable(f"Label Studio at {self.url} is not reachable: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("validation_errors") or body.get("detail") or body
            except ValueError:
                detail = response.text[:300]
            if response.status_code in (401, 403):
                raise LabelStudioRefused(f"Label Studio at {self.url} refused the API token (HTTP "
                                         f"{response.status_code}): {detail}; pass the legacy token of an "
                                         "administrator (--api-key or LABEL_STUDIO_API_KEY)")
            raise LabelStudioRefused(f"Label Studio refused {method} {path} (HTTP {response.status_code}): {detail}")
        return response.json() if response.content else None

    # projects -------------------------------------------------------------------------------------------------
    def projects(self, fields: str | None = None) -> list[dict]:
        """Every project (id, title, label_config, ...; ``fields``: only these, comma-separated, e.g. ``"id,title"``,
        which spares the server the per-project task counts: a tenth of the time on a server holding 100,000
        tasks)."""
        found, page = [], 1
        while True:
            params = {"page": page, "page_size": 100} | ({"include": fields} if fields else {})
            answer = self.request("GET", "/api/projects/", params=params)
            found += answer["results"]
            if not answer.get("next"):
                return found
            page += 1

    def find_project(self, title: str) -> dict | None:
        """The project called ``title`` (the newest, if several), or ``None``."""
        matches = [p for p in self.projects("id,title") if p.get("title") == title]
        return self.project(max(p["id"] for p in matches)) if matches else None

    def project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{project_id}/")

    def create_project(self, title: str, label_config: str, description: str = "", **fields) -> dict:
        """A new project (``fields``: more project settings, e.g. ``sampling``); the project as created."""
        return self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config,
                                                             "description": description, **fields})

    def update_project(self, project_id: int, **fields) -> dict:
        return self.request("PATCH", f"/api/projects/{project_id}/", json=fields)

    # tasks, predictions, annotations --------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: Sequence[dict] = (), *, content: bytes | None = None) -> list[int]:
        """Create ``tasks`` (``{"data": {...}, "predictions": [...]}``) in one request; their new ids, in order.
        ``content``: the tasks already encoded as a JSON array (UTF-8), sent as they are instead of ``tasks``."""
        if content is None:
            content = json.dumps(list(tasks)).encode("utf-8")
        answer = self.request("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"},
                              content=content, headers={"Content-Type": "application/json"})
        return list(answer.get("task_ids") or [])

    def tasks(self, project_id: int, page_size: int = 1000) -> list[dict]:
        """Every task of the project with its data, annotations and predictions (the Data Manager's task list,
        page by page)."""
        found, page = [], 1
        while True:
            answer = self.request("GET", "/api/tasks/", params={"project": project_id, "fields": "all",
                                                                "page": page, "page_size": page_size})
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            found += batch
            total = answer.get("total") if isinstance(answer, dict) else None
            if not batch or len(batch) < page_size or (total is not None and len(found) >= total):
                return found
            page += 1

    def import_predictions(self, project_id: int, predictions: Sequence[dict]) -> int:
        """Add predictions to existing tasks (``{"task", "result", "score", "model_version"}``); how many."""
        if not predictions:
            return 0
        answer = self.request("POST", f"/api/projects/{project_id}/import/predictions", json=list(predictions))
        return int((answer or {}).get("created", len(predictions)))

    def model_versions(self, project_id: int) -> dict[str, int]:
        """``{model_version: predictions}`` of the project."""
        return self.request("GET", f"/api/projects/{project_id}/model-versions/") or {}

    def delete_model_version(self, project_id: int, version: str) -> int:
        """Delete every prediction of ``version``; how many."""
        answer = self.request("DELETE", f"/api/projects/{project_id}/model-versions/", json={"model_version": version})
        return int((answer or {}).get("deleted_predictions", 0))

    def create_annotation(self, task_id: int, result: list[dict], completed_by: int | None = None) -> dict:
        body = {"result": result, **({"completed_by": completed_by} if completed_by is not None else {})}
        return self.request("POST", f"/api/tasks/{task_id}/annotations/", json=body)

    def delete_annotation(self, annotation_id: int) -> None:
        self.request("DELETE", f"/api/annotations/{annotation_id}/")

    # users, views, ML backends --------------------------------------------------------------------------------
    def users(self) -> list[dict]:
        """Every user of the organisation (id, username, email, ...)."""
        return self.request("GET", "/api/users/") or []

    def user_id(self, username: str, users: list[dict] | None = None) -> int:
        """The id of the user ``username`` (looked up in ``users`` when given, else read), created (no password: it
        cannot log in) when absent."""
        for user in self.users() if users is None else users:
            if user.get("username") == username:
                return int(user["id"])
        created = self.request("POST", "/api/users/", json={"username": username, "email": f"{username}@localhost",
                                                            "first_name": username})
        return int(created["id"])

    def ensure_view(self, project_id: int, title: str, *, filters: list[dict] | None = None,
                    ordering: list[str] | None = None) -> int:
        """A Data Manager tab called ``title`` with these filters (``conjunction`` and) and ordering, created or
        updated; its id (the link is ``/projects/<project>/data?tab=<id>``)."""
        data = {"title": title, "ordering": ordering or [],
                "filters": {"conjunction": "and", "items": filters or []}}
        for view in self.request("GET", "/api/dm/views/", params={"project": project_id}) or []:
            if view.get("data", {}).get("title") == title:
                self.request("PATCH", f"/api/dm/views/{view['id']}/", json={"project": project_id, "data": data})
                return int(view["id"])
        return int(self.request("POST", "/api/dm/views/", json={"project": project_id, "data": data})["id"])

    def ml_backends(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/ml/", params={"project": project_id}) or []

    def add_ml_backend(self, project_id: int, url: str, title: str = "zeroshot-preannotate") -> dict:
        """Connect the ML backend at ``url`` to the project (as Settings > Model does), with interactive training on
        annotation events."""
        return self.request("POST", "/api/ml/", json={"project": project_id, "url": url, "title": title,
                                                      "is_interactive": False, "auto_update": True})
