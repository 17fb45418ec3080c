"""Zero-shot pre-annotation service: NLI cross-encoder and sentence-embedding scoring behind a FastAPI app."""
