"""Base classifiers: one module per provider, all behind :class:`Adapter`.

``create_adapter(name, **options)`` builds one by name from the table below, which
says which module holds it and which optional extra its vendor SDK comes from.
Provider modules import their SDK only when an adapter is built, so importing
smoothapi never needs an extra, and a missing one fails with
:class:`~smoothapi.errors.MissingDependencyError` naming the ``pip install`` to run.
"""

from __future__ import annotations

import importlib

from ..errors import InvalidInputError
from .base import Adapter
from .encoding import ImageLimits, encode_image
from .local import LocalModelAdapter
from .remote import RemoteAdapter

__all__ = [
    "PROVIDERS",
    "Adapter",
    "ImageLimits",
    "LocalModelAdapter",
    "RemoteAdapter",
    "create_adapter",
    "encode_image",
    "list_adapters",
]

#: name -> (module, class, optional extra holding its SDK)
PROVIDERS: dict[str, tuple[str, str, str | None]] = {
    "local": ("smoothapi.adapters.local", "LocalModelAdapter", None),
    "http": ("smoothapi.adapters.http", "HTTPAdapter", None),
    "azure": ("smoothapi.adapters.azure", "AzureVisionAdapter", "azure"),
    "google": ("smoothapi.adapters.google", "GoogleVisionAdapter", "google"),
    "aws": ("smoothapi.adapters.aws", "RekognitionAdapter", "aws"),
    "clarifai": ("smoothapi.adapters.clarifai", "ClarifaiAdapter", "clarifai"),
}


def list_adapters() -> list[str]:
    """Names accepted by :func:`create_adapter`."""
    return sorted(PROVIDERS)


def create_adapter(name: str, /, **options) -> Adapter:
    """Build the adapter ``name`` (see :func:`list_adapters`) with its options."""
    try:
        module, cls, _extra = PROVIDERS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown adapter {name!r}; known: {', '.join(list_adapters())}"
        ) from None
    return getattr(importlib.import_module(module), cls)(**options)
