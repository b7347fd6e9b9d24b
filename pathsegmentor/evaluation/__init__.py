"""Evaluation: pixel and instance metrics, per category and per source; CellSAM's scores; model vocabularies."""
