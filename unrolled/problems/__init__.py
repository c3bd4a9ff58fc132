"""Problem definitions: operators, seeded data and their conventions."""

from __future__ import annotations

import inspect
from typing import Any

from unrolled.problems.base import Problem, seeded_generator
from unrolled.problems.image_patches import ImagePatchCS
from unrolled.problems.imaging_tasks import BlockCSTask, ImagingBatch, ImagingTask, InpaintingTask, MRITask, build_imaging_task
from unrolled.problems.sparse_coding import SparseCoding, gaussian_operator

PROBLEMS: dict[str, type[Problem]] = {SparseCoding.name: SparseCoding, ImagePatchCS.name: ImagePatchCS}


def build_problem(spec: dict[str, Any]) -> Problem:
    """Rebuild a problem from its :meth:`Problem.spec`; only names registered in ``PROBLEMS`` are accepted."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; expected one of {sorted(PROBLEMS)}.")
    accepted = inspect.signature(PROBLEMS[name]).parameters
    unknown = sorted(set(spec) - set(accepted))
    if unknown:
        raise ValueError(f"problem {name!r} has no parameter {', '.join(map(repr, unknown))}; it accepts {', '.join(accepted)}.")
    return PROBLEMS[name](**spec)


__all__ = [
    "PROBLEMS",
    "BlockCSTask",
    "ImagePatchCS",
    "ImagingBatch",
    "ImagingTask",
    "InpaintingTask",
    "MRITask",
    "Problem",
    "SparseCoding",
    "build_imaging_task",
    "build_problem",
    "gaussian_operator",
    "seeded_generator",
]
