"""Result models and safe writing of results."""

from llenergymeasure.results.models import ExperimentResult

__all__ = ["ExperimentResult"]
