"""Pre-annotation with Argilla: push zero-shot suggestions (``python -m annotate push``), export curated records
(``python -m annotate export``)."""
