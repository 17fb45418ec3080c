"""Scorers and pool storage: the layer that training and annotation share.

``pool.scorers`` gets zero-shot scores and sentence embeddings for texts (a running service over HTTP, or the
service's own models in-process); ``pool.store`` keeps a scored pool on disk (Parquet shards); ``pool.readers``
reads the input files people give (``.txt``, ``.csv``, ``.jsonl``, ``.parquet``); ``pool.uncertainty`` turns
scores into the uncertainty measures the review order sorts by. It imports only ``service``; ``train`` and
``annotate`` import it (the layer contract in ``pyproject.toml``, checked by import-linter in CI).
"""
