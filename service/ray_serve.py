"""The zero-shot service as Ray Serve replicas: the same FastAPI app (:func:`service.app.create_app`), one per replica.

Each replica builds the app in its own process (``serve.ingress`` with a builder, so models load on the replica,
through the app's own lifespan) from the ``ZSC_*`` environment, with its engine threads set to the replica's CPUs;
Ray Serve's HTTP proxy spreads requests over the replicas. The service keeps no state between requests (models are
read-only, the label cache is a per-process cache), so replicas can be added or removed at any time.

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


def _build_app():
    """The service app, built on the replica (settings from its ``ZSC_*`` environment)."""
    from service.app import create_app

    return create_app()


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
