"""``python -m service``: run the zero-shot service (options override ``ZSC_*`` environment variables)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from service.config import Settings

cli = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@cli.command()
def main(
    host: Annotated[Optional[str], typer.Option(help="Interface to bind (env ZSC_HOST; default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (env ZSC_PORT; default 8000).")] = None,
    model: Annotated[Optional[str], typer.Option(help="NLI model: default, a model directory, a hub id, a zoo: stub, "
                                                 "or none (env ZSC_MODEL).")] = None,
    embedding_model: Annotated[Optional[str], typer.Option(help="Sentence encoder of the embedding method: default "
                                                           "(packaged all-MiniLM-L6-v2), a directory, a hub id, or "
                                                           "none (env ZSC_EMBEDDING_MODEL).")] = None,
    method: Annotated[Optional[str], typer.Option(help="Method when a request names none: auto (embedding "
                                                  "for single-label, nli for multi-label), nli, embedding or "
                                                  "ensemble (env ZSC_METHOD).")] = None,
    calibrate: Annotated[Optional[bool], typer.Option(help="Apply the fitted temperatures stored with the models "
                                                      "(env ZSC_CALIBRATE; default on).")] = None,
    engine: Annotated[Optional[str], typer.Option(help="auto, deepsparse, onnxruntime or torch (env ZSC_ENGINE).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per pair (env ZSC_MAX_LENGTH).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per forward pass (env ZSC_BATCH_SIZE).")] = None,
    num_threads: Annotated[Optional[int], typer.Option(help="Threads/cores for the engine (env ZSC_NUM_THREADS).")] = None,
    quantization: Annotated[Optional[str], typer.Option(help="auto (each engine's measured int8 form), none (fp32), "
                                                        "qdq, integer or dynamic (env ZSC_QUANTIZATION).")] = None,
    batch_wait_ms: Annotated[Optional[float], typer.Option(help="Micro-batching wait in ms; 0 turns it off "
                                                           "(env ZSC_BATCH_WAIT_MS).")] = None,
    classifier: Annotated[Optional[list[str]], typer.Option(help="A fine-tuned classifier for POST /classify, "
                                                            "NAME=DIR (repeatable; env ZSC_CLASSIFIERS as JSON).")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug, info, warning (env ZSC_LOG_LEVEL).")] = None,
    max_concurrent_requests: Annotated[Optional[int], typer.Option(help="Most requests in progress; beyond, 429 "
                                                                   "(env ZSC_MAX_CONCURRENT_REQUESTS).")] = None,
    timeout_graceful_shutdown: Annotated[Optional[float], typer.Option(help="On SIGTERM, seconds for requests in "
                                                                       "progress to finish (env "
                                                                       "ZSC_TIMEOUT_GRACEFUL_SHUTDOWN).")] = None,
    max_start_s: Annotated[Optional[float], typer.Option(help="engine=auto: warm start budget in seconds, shared by "
                                                     "the models (env ZSC_MAX_START_S; default 15).")] = None,
    max_rss_mb: Annotated[Optional[float], typer.Option(help="engine=auto: memory budget in MiB, shared by the "
                                                        "models (env ZSC_MAX_RSS_MB; default 1000).")] = None,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="engine=auto: time the engines again instead of "
                                            "reusing the measurement stored in the cache (env ZSC_REMEASURE).")] = False,
) -> None:
    """Start the HTTP server; the model loads in the background (watch GET /ready)."""
    overrides = {k: v for k, v in dict(host=host, port=port, model=model, embedding_model=embedding_model,
                                       method=method, calibrate=calibrate, engine=engine, max_length=max_length,
                                       batch_size=batch_size, num_threads=num_threads, log_level=log_level,
                                       quantization=quantization, batch_wait_ms=batch_wait_ms,
                                       max_concurrent_requests=max_concurrent_requests,
                                       timeout_graceful_shutdown=timeout_graceful_shutdown,
                                       max_start_s=max_start_s, max_rss_mb=max_rss_mb).items()
                 if v is not None}
    if remeasure:
        overrides["remeasure"] = True
    if classifier:
        bad = [c for c in classifier if "=" not in c or not c.split("=", 1)[0] or not c.split("=", 1)[1]]
        if bad:
            typer.echo(f"error: --classifier {bad[0]!r}: write NAME=DIR", err=True)
            raise typer.Exit(2)
        overrides["classifiers"] = dict(c.split("=", 1) for c in classifier)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: " if err["loc"] else ""
        typer.echo(f"error: {where}{err['msg']}", err=True)
        raise typer.Exit(2) from None
    if settings.engine != "torch" and "USE_TORCH" not in os.environ and "torch" not in sys.modules:
        # Only the tokenizers of transformers serve here; with torch it imports torch, scikit-learn and scipy too
        # (~10 s and ~400 MB, docs/speed_startup.md). Exports, when a graph is not cached, run in a child process.
        os.environ["USE_TORCH"] = "0"
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # its "None of PyTorch ... found" notice
    import uvicorn

    from service.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM: uvicorn stops accepting, lets requests in progress finish for up to timeout_graceful_shutdown
    # seconds, then runs the app's shutdown (the micro-batchers finish what they hold).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.timeout_graceful_shutdown)


if __name__ == "__main__":
    sys.exit(cli())
