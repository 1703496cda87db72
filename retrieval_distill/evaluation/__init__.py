"""Evaluation: TREC run files, metrics (ranx), comparisons with significance tests, reports."""
