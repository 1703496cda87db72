"""retrieval-distill: distil slow, accurate rankers into fast first-stage retrievers and serve them."""

__version__ = "0.1.0"
