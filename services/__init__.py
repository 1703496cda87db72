"""Deployable services of retrieval-distill (the FastAPI search API)."""
