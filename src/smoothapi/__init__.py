"""smoothapi: certified l2 robustness for any image classifier by denoised randomized smoothing.

from smoothapi import SmoothedClassifier, LocalModelAdapter
smoothed = SmoothedClassifier(LocalModelAdapter(model), sigma=0.25, denoiser=denoiser)
result = smoothed.certify(image, n0=100, n=10_000, alpha=0.001)
"""

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

__version__ = "0.1.0"

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
