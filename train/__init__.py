"""Training: the NLI teacher, its sparsified variants, and students distilled from curated records."""
