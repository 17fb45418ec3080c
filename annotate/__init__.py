"""Pre-annotation with Argilla: push zero-shot suggestions, export curated records (coming with the Argilla issue)."""
