"""The zero-shot service as Ray Serve replicas: the same FastAPI app (:func:`service.app.create_app`), one per replica.

Each replica builds the app in its own process (``serve.ingress`` with a builder, so models load on the replica,
through the app's own lifespan) from the ``ZSC_*`` environment, with its engine threads set to the replica's CPUs;
Ray Serve's HTTP proxy spreads requests over the replicas. The service keeps no state between requests (models are
read-only, the label cache is a per-process cache), so replicas can be added or removed at any time.

Readiness: Serve routes requests to a replica once its constructor, the app's lifespan start-up included, has
returned. The plain service loads its models in the background (``GET /ready`` says when they are in); a replica
instead builds the app with ``load_before_serving``, so its start-up returns only once the models are loaded (and
fails with the loader's error when they cannot load: Serve then replaces the replica). A replica the proxy can reach
is therefore always ready: no request, ``/ready`` included, ever meets a replica still loading (once, one replica
answered ``/ready`` 200 while another still answered 503). Every answer names its replica in the
``x-replica-id`` header (Serve's replica id), so a client or a test can see which replica served it.

Run it (https://docs.ray.io/en/latest/serve/)::

    serve run service.ray_serve:app                                  # 1 replica, 1 CPU, ZSC_* from the environment
    serve run service.ray_serve:build replicas=2 num_cpus=1          # 2 replicas of 1 CPU each
    curl -s localhost:8000/ready; curl -s localhost:8000/zero-shot -H 'content-type: application/json' -d '{...}'

``serve run`` binds the proxy to 127.0.0.1:8000 unless told otherwise (``serve run --address`` for a cluster; the
proxy's host/port via ``serve start --http-host/--http-port`` or :func:`start`). docs/scale.md compares it with the
plain service's own micro-batching on one machine.
"""

from __future__ import annotations

from ray import serve

#: Response header naming the replica that answered (its Serve replica id).
REPLICA_HEADER = "x-replica-id"


class ReplicaHeader:
    """ASGI middleware adding ``x-replica-id: <replica id>`` to every HTTP response of this replica."""

    def __init__(self, app, replica_id: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica_id.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named_send(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named_send)


def _build_app():
    """The service app, built on the replica (settings from its ``ZSC_*`` environment), serving only once its models
    are loaded, with every answer naming the replica."""
    from service.app import create_app

    app = create_app(load_before_serving=True)
    app.add_middleware(ReplicaHeader, replica_id=serve.get_replica_context().replica_id.unique_id)
    return app


@serve.ingress(_build_app)
class ZeroShotService:
    """One replica of the zero-shot service (every route of :func:`service.app.create_app`)."""


def build(args: dict | None = None):
    """The Serve application: ``replicas`` replicas (default 1) of ``num_cpus`` CPUs each (default 1; also the
    engine's intra-op threads, ``ZSC_NUM_THREADS``).

    Raises:
        ValueError: ``replicas`` or ``num_cpus`` is not a positive integer.
    """
    args = dict(args or {})
    try:
        replicas, cpus = int(args.pop("replicas", 1)), int(args.pop("num_cpus", 1))
    except (TypeError, ValueError):
        raise ValueError("replicas and num_cpus must be positive integers") from None
    if replicas < 1 or cpus < 1 or args:
        raise ValueError(f"replicas and num_cpus must be positive integers (unknown arguments: {sorted(args)})")
    deployment = serve.deployment(ZeroShotService, name="zeroshot", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus,
                                                     "runtime_env": {"env_vars": {"ZSC_NUM_THREADS": str(cpus)}}},
                                  health_check_period_s=10, graceful_shutdown_timeout_s=30)
    return deployment.bind()


#: ``serve run service.ray_serve:app``: one replica.
app = build()


def start(replicas: int = 1, num_cpus: int = 1, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Run the application on the connected (or a new local) Ray instance with the proxy on ``host:port``;
    returns the base URL. ``serve.shutdown()`` stops it."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build({"replicas": replicas, "num_cpus": num_cpus}), name="zeroshot", route_prefix="/")
    return f"http://{host}:{port}"
