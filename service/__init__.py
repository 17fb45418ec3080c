"""Zero-shot pre-annotation service: NLI cross-encoder scoring behind a FastAPI app."""
