"""Decisions: the question a certificate answers, as a function of one answer.

A vision API answers an image with ranked labels (``[("Cat", 0.97), ("Mammal", 0.95),
("Whiskers", 0.9), ...]``); a local model with its classes ranked by probability. A
*decision* maps one such answer to a class, or to ``None`` ("no decision", never
certified). Any fixed function of the answer is part of the base classifier ``f``, so
the smoothed classifier built on it is certified exactly as the top label is: with
probability at least ``1 - alpha``, no perturbation within the radius changes the
*decision*. A coarser question ("is this a cat?") has a larger ``p_A`` than the exact
top label, hence larger radii for the same queries.

Built-ins (each also a ``--decision`` of the CLI):

- :class:`TopLabel`: the highest-ranked label, renamed by an optional ``label_map``
  (the default decision);
- :class:`Vocabulary`: the class of the highest-ranked label within your vocabulary
  (each class with its synonyms), else ``other``;
- :class:`Flag`: ``"flagged"`` when any label of a set scores at least ``threshold``,
  else ``"not flagged"`` (moderation-style);
- :class:`Ancestor`: for ImageNet labels, the nearest of your WordNet synsets (``"cat"``,
  ``"dog"``, ``"mammal"`` ...) above the highest-ranked label in the hierarchy
  (:mod:`smoothapi.zoo.hierarchy`).

Any callable ``ranked -> label or None`` works too (:func:`as_decision` wraps it); its
``identity`` is its qualified name, so give a distinct name to each different function.

**Statistics.** Each decision's certificate holds at ``alpha`` on its own. Asking ``k``
decisions of the same samples and keeping every answer holds at ``k * alpha`` jointly
(union bound), as repeated attempts do.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .certification import Label
from .errors import InvalidInputError

__all__ = [
    "Ancestor",
    "Decision",
    "Flag",
    "Ranked",
    "TopLabel",
    "Vocabulary",
    "as_decision",
]

#: One answer: ``(label, score)`` pairs, highest score first.
Ranked = Sequence[tuple[Label, float]]


class Decision(abc.ABC):
    """Maps one ranked answer to a class, or ``None`` for "no decision"."""

    @abc.abstractmethod
    def __call__(self, ranked: Ranked) -> Label | None:
        """The decision on one answer."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON that says what decides (it keys the journal's runs): two decisions with
        the same identity must decide alike."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.identity().items() if k != "decision")
        return f"{type(self).__name__}({params})"


class TopLabel(Decision):
    """The highest-ranked label (``None`` for an empty answer), renamed by ``label_map``."""

    def __init__(self, label_map: Mapping[Any, Label] | None = None) -> None:
        self.label_map = dict(label_map or {})

    def __call__(self, ranked: Ranked) -> Label | None:
        if not ranked:
            return None
        top = ranked[0][0]
        return self.label_map.get(top, top)

    def identity(self) -> dict[str, Any]:
        found: dict[str, Any] = {"decision": "top"}
        if self.label_map:
            ordered = sorted(self.label_map.items(), key=lambda kv: str(kv[0]))
            found["label_map"] = {str(k): v for k, v in ordered}
        return found


def _key(label: object) -> str:
    return " ".join(str(label).lower().split())


class Vocabulary(Decision):
    """The class of the highest-ranked label that is in the vocabulary, else ``other``.

    ``classes`` is a list of class names, or a mapping class -> synonyms (each class also
    matches its own name). Labels match case-insensitively, whitespace normalised.
    ``min_score``: labels scoring less are ignored.
    """

    def __init__(
        self,
        classes: Sequence[str] | Mapping[str, Iterable[str]],
        other: Label | None = None,
        min_score: float = 0.0,
    ) -> None:
        synonyms = classes if isinstance(classes, Mapping) else {c: () for c in classes}
        self.classes = {str(c): sorted({str(c), *map(str, words)}) for c, words in
                        synonyms.items()}  # fmt: skip
        if not self.classes:
            raise InvalidInputError("a vocabulary needs at least one class")
        self._lookup: dict[str, str] = {}
        for name, words in self.classes.items():
            for word in words:
                if self._lookup.setdefault(_key(word), name) != name:
                    raise InvalidInputError(
                        f"{word!r} is a synonym of both {self._lookup[_key(word)]!r} and {name!r}"
                    )
        self.other, self.min_score = other, float(min_score)

    def __call__(self, ranked: Ranked) -> Label | None:
        for label, score in ranked:
            if score is not None and score < self.min_score:
                continue
            found = self._lookup.get(_key(label))
            if found is not None:
                return found
        return self.other

    def identity(self) -> dict[str, Any]:
        return {"decision": "vocabulary", "classes": self.classes, "other": self.other,
                "min_score": self.min_score}  # fmt: skip


class Flag(Decision):
    """``flagged`` when any label in ``labels`` scores at least ``threshold``, else
    ``clear`` (labels match case-insensitively)."""

    def __init__(self, labels: Iterable[str], threshold: float = 0.5,
                 flagged: str = "flagged", clear: str = "not flagged") -> None:  # fmt: skip
        self.labels = sorted({_key(label) for label in labels})
        if not self.labels:
            raise InvalidInputError("a flag needs at least one label")
        if not math.isfinite(threshold):
            raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold, self.flagged, self.clear = float(threshold), flagged, clear
        self._set = set(self.labels)

    def __call__(self, ranked: Ranked) -> Label | None:
        hit = any(_key(label) in self._set and score is not None and score >= self.threshold
                  for label, score in ranked)  # fmt: skip
        return self.flagged if hit else self.clear

    def identity(self) -> dict[str, Any]:
        return {"decision": "flag", "labels": self.labels, "threshold": self.threshold,
                "flagged": self.flagged, "clear": self.clear}  # fmt: skip


class Ancestor(Decision):
    """For ImageNet labels: the nearest of ``targets`` (WordNet synsets by their first word,
    e.g. ``["cat", "dog", "bird"]`` or ``["mammal"]``) at or above the highest-ranked label
    that lies at or below one of them, else ``other``. Labels the hierarchy does not know,
    and labels coarser than every target (an API's "Animal" above "Cat" when the targets are
    cat and dog), are passed over: the answer's finer labels decide."""

    def __init__(self, targets: Sequence[str], other: Label | None = None) -> None:
        from .zoo.hierarchy import imagenet_chains

        chains = imagenet_chains()
        unknown = [t for t in targets if t not in chains]
        if unknown or not targets:
            raise InvalidInputError(
                f"not in ImageNet's WordNet hierarchy: {', '.join(map(repr, unknown)) or 'none'} "
                "(see smoothapi.zoo.hierarchy.imagenet_chain('Egyptian cat') for names)"
            )
        self.targets, self.other = list(targets), other
        self._chains, self._targets = chains, set(self.targets)

    def __call__(self, ranked: Ranked) -> Label | None:
        for label, _ in ranked:
            reached = next((step for step in self._chains.get(str(label), ())
                            if step in self._targets), None)  # fmt: skip
            if reached is not None:
                return reached
        return self.other

    def identity(self) -> dict[str, Any]:
        return {"decision": "ancestor", "targets": self.targets, "other": self.other}


class _Function(Decision):
    def __init__(self, function: Callable[[Ranked], Label | None]) -> None:
        self.function = function

    def __call__(self, ranked: Ranked) -> Label | None:
        return self.function(ranked)

    def identity(self) -> dict[str, Any]:
        name = getattr(self.function, "__qualname__", type(self.function).__qualname__)
        module = getattr(self.function, "__module__", "")
        return {"decision": "function", "name": f"{module}.{name}"}


def as_decision(decision: Decision | Callable[[Ranked], Label | None] | None,
                label_map: Mapping[Any, Label] | None = None) -> Decision:  # fmt: skip
    """``decision`` as a :class:`Decision`: ``None`` is :class:`TopLabel` with ``label_map``;
    a plain callable is wrapped (its identity is its qualified name)."""
    if decision is None:
        return TopLabel(label_map)
    if label_map:
        raise InvalidInputError("label_map applies to the default decision only; "
                                "put the renaming into your decision")  # fmt: skip
    if isinstance(decision, Decision):
        return decision
    if callable(decision):
        return _Function(decision)
    raise InvalidInputError(f"a decision must be callable, got {type(decision).__name__}")
