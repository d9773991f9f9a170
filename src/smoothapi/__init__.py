"""smoothapi: certified l2 robustness for any image classifier by denoised randomized smoothing.

from smoothapi import SmoothedClassifier, LocalModelAdapter
smoothed = SmoothedClassifier(LocalModelAdapter(model), sigma=0.25, denoiser=denoiser)
result = smoothed.certify(image, n0=100, n=10_000, alpha=0.001)

The package loads lazily: ``import smoothapi`` is instant, and each name (or submodule)
loads its module on first use, so the command line can answer Ctrl-C while torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ImageWarning": "._images",
    "Adapter": ".adapters",
    "LocalModelAdapter": ".adapters",
    "ABSTAIN": ".certification",
    "Certification": ".certification",
    "Prediction": ".certification",
    "certify_counts": ".certification",
    "clopper_pearson_lower": ".certification",
    "max_certifiable_radius": ".certification",
    "predict_counts": ".certification",
    "samples_needed": ".certification",
    "create_denoiser": ".denoisers",
    "list_denoisers": ".denoisers",
    "load_denoiser": ".denoisers",
    "ClientStats": ".dispatch",
    "RateLimits": ".dispatch",
    "RetryPolicy": ".dispatch",
    "CheckpointError": ".errors",
    "Interrupted": ".errors",
    "InvalidInputError": ".errors",
    "JournalError": ".errors",
    "JournalLockedError": ".errors",
    "MissingDependencyError": ".errors",
    "SmoothAPIError": ".errors",
    "UsageError": ".errors",
    "ImageOutcome": ".runs",
    "Outcome": ".sequential",
    "RadiusCertification": ".sequential",
    "SequentialTest": ".sequential",
    "expected_queries": ".sequential",
    "information_floor": ".sequential",
    "SmoothedClassifier": ".smoothing",
}


def __getattr__(name: str) -> Any:
    """Load a public name's module (or a submodule) on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from ._images import ImageWarning
    from .adapters import Adapter, LocalModelAdapter
    from .certification import (
        ABSTAIN,
        Certification,
        Prediction,
        certify_counts,
        clopper_pearson_lower,
        max_certifiable_radius,
        predict_counts,
        samples_needed,
    )
    from .denoisers import create_denoiser, list_denoisers, load_denoiser
    from .dispatch import ClientStats, RateLimits, RetryPolicy
    from .errors import (
        CheckpointError,
        Interrupted,
        InvalidInputError,
        JournalError,
        JournalLockedError,
        MissingDependencyError,
        SmoothAPIError,
        UsageError,
    )
    from .runs import ImageOutcome
    from .sequential import (
        Outcome,
        RadiusCertification,
        SequentialTest,
        expected_queries,
        information_floor,
    )
    from .smoothing import SmoothedClassifier


__all__ = [
    "ABSTAIN",
    "Adapter",
    "Certification",
    "CheckpointError",
    "ClientStats",
    "ImageOutcome",
    "ImageWarning",
    "Interrupted",
    "InvalidInputError",
    "JournalError",
    "JournalLockedError",
    "LocalModelAdapter",
    "MissingDependencyError",
    "Outcome",
    "Prediction",
    "RadiusCertification",
    "RateLimits",
    "RetryPolicy",
    "SmoothAPIError",
    "SequentialTest",
    "SmoothedClassifier",
    "UsageError",
    "__version__",
    "certify_counts",
    "clopper_pearson_lower",
    "create_denoiser",
    "expected_queries",
    "information_floor",
    "list_denoisers",
    "load_denoiser",
    "max_certifiable_radius",
    "predict_counts",
    "samples_needed",
]
