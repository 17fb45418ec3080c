"""Property-based testing of the HTTP API from its own OpenAPI schema (schemathesis + Hypothesis), over real HTTP.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid (wrong types, missing fields,
odd Unicode, oversized values); none may get a 5xx. The service runs the embedding method only, with small limits
and a bounded number of examples, so the test stays well under two minutes on 2 cores.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.config import Settings

from .conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(minilm_dir, cache_dir):
    service_settings = Settings(model="none", embedding_model=str(minilm_dir), engine="onnxruntime", cache_dir=cache_dir,
                                quantization="none", max_texts=4, max_labels_embedding=8, max_text_chars=400,
                                max_body_bytes=20_000, max_chunks=4)
    with LiveServer(create_app(service_settings)) as server:
        assert server.wait_ready().status_code == 200
        yield server


# The schema is the app's own (building the app loads no model); the requests go to the live server. (The lazy
# schemathesis.pytest.from_fixture loader does not run under pytest 9: it sets a node attribute pytest removed.)
schema = schemathesis.openapi.from_dict(create_app(Settings(model="none", embedding_model="default")).openapi())


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_generated_request_gets_a_server_error(case, live):
    case.call_and_validate(base_url=live.url, checks=[not_a_server_error], timeout=60)
