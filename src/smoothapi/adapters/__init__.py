"""Base classifiers: one module per provider, all behind :class:`Adapter`.

Vendor SDKs are imported only inside their own module, so importing this package
never needs an optional extra.
"""

from .base import Adapter
from .local import LocalModelAdapter

__all__ = ["Adapter", "LocalModelAdapter"]
