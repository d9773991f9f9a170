"""A tiny name -> factory registry shared by the model families (classifiers, denoisers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from .errors import InvalidInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories registered by name with :meth:`register`, built with :meth:`create`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, factory: Callable[..., T]) -> Callable[..., T]:
        """Decorator: register ``factory`` under its function name."""
        name = factory.__name__
        if name in self._factories:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory
        return factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, **kwargs) -> T:
        try:
            factory = self._factories[name]
        except KeyError:
            raise InvalidInputError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None
        built = factory(**kwargs)
        # Remember how it was built, so a checkpoint can rebuild it from metadata alone.
        cast(Any, built).arch_config = {"arch": name, "kwargs": dict(kwargs)}
        return built
