"""Talking to the Argilla server: connect, find workspace and dataset, and retry transient failures.

Errors come out as :class:`ArgillaUnavailable` (unreachable, or 5xx after retries) or
:class:`ArgillaRefused` (the server answered 4xx: bad key, unknown workspace, invalid records).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class ArgillaRefused(RuntimeError):
    """Argilla answered with a client error (4xx): the input or the credentials are wrong. Not retried."""


class ArgillaUnavailable(RuntimeError):
    """Argilla could not be reached, or kept failing with 5xx, after retries."""


def _transient(exc: BaseException) -> bool:
    import httpx
    from argilla._exceptions import ArgillaAPIError

    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ArgillaAPIError) and (exc.status_code or 500) >= 500


def call(fn: Callable[..., T], *args, attempts: int = 6, max_wait: float = 20.0, what: str = "Argilla request",
         **kwargs) -> T:
    """``fn(*args, **kwargs)`` retried with exponential backoff on connection errors and 5xx answers.

    Only idempotent calls belong here (upserts keyed by record id, reads).

    Raises:
        ArgillaRefused: a 4xx answer (first time, no retry).
        ArgillaUnavailable: still failing after ``attempts`` tries.
    """
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    retrying = Retrying(retry=retry_if_exception(_transient), stop=stop_after_attempt(attempts), reraise=True,
                        wait=wait_exponential(multiplier=0.5, max=max_wait),
                        before_sleep=lambda s: logger.warning("%s failed (%s); retry %d", what,
                                                              _short(s.outcome.exception()), s.attempt_number))
    try:
        return retrying(fn, *args, **kwargs)
    except ArgillaCredentialsError as exc:
        raise ArgillaRefused(f"{what}: {_short(exc)}") from None
    except ArgillaAPIError as exc:
        if _transient(exc):
            raise ArgillaUnavailable(f"{what} kept failing after {attempts} tries: {_short(exc)}") from None
        raise ArgillaRefused(f"Argilla refused the {what} (HTTP {exc.status_code}): {_short(exc)}") from None
    except Exception as exc:
        if _transient(exc):
            raise ArgillaUnavailable(f"{what}: Argilla unreachable after {attempts} tries: {_short(exc)}") from None
        raise


def _short(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:400] + "..."


def connect(api_url: str, api_key: str, timeout: int = 120):
    """An ``argilla.Argilla`` client whose key was checked (``GET /api/v1/me``).

    Raises:
        ArgillaRefused: the key is wrong. ArgillaUnavailable: no server at ``api_url``.
    """
    import argilla as rg

    def login():
        client = rg.Argilla(api_url=api_url, api_key=api_key, timeout=timeout, retries=0)  # validates the key
        client.me  # noqa: B018 - cached; later calls reuse it
        return client

    return call(login, attempts=3, what=f"login to Argilla at {api_url}")


def find_dataset(client, name: str, workspace: str):
    """The dataset ``name`` in ``workspace``, or ``None``.

    Raises:
        ArgillaRefused: the workspace does not exist (or this key cannot see it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = call(client.workspaces, workspace, what="workspace lookup")
        if ws is None:
            raise ArgillaRefused(f"workspace {workspace!r} not found on the Argilla server (or the API key "
                                 "has no access): create it or pass --workspace")
        return call(client.datasets, name, workspace=ws, what="dataset lookup")
