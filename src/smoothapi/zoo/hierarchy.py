"""ImageNet's classes in WordNet's hierarchy: Egyptian cat -> domestic cat -> cat -> ...

The 1,000 ImageNet-1k classes are WordNet 3.0 noun synsets. ``data/imagenet_hierarchy.tsv``
holds, for each class (index order, named as :func:`~smoothapi.zoo.imagenet_classes`
names it), its chain of hypernyms up to WordNet's root, each synset named by its first
word; where WordNet gives a synset two hypernyms the first is followed. The table is
derived offline by ``scripts/build_imagenet_hierarchy.py`` from WordNet 3.0 (Debian's
``wordnet-base``; its licence ships beside the table) and timm's list of the classes'
synset ids, checked against our class names (998 of 1,000 are words of their synset;
"crane bird" and "maillot tank suit" are our disambiguated names).

    >>> imagenet_chain("Egyptian cat")[:7]
    ('Egyptian cat', 'domestic cat', 'cat', 'feline', 'carnivore', 'placental', 'mammal')
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["imagenet_chain", "imagenet_chains"]


@functools.cache
def imagenet_chains() -> dict[str, tuple[str, ...]]:
    """Every name in the table -> its chain up to "entity" (the name first): each class
    name, and each hypernym by its first word (a word two synsets share keeps the chain
    of the one met first, in class order)."""
    text = resources.files("smoothapi").joinpath("data/imagenet_hierarchy.tsv").read_text("utf-8")
    chains: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, name, *steps = line.split("\t")
        words = tuple(step.split(":", 1)[1] for step in steps)
        chains[name] = (name, *words[1:])
        for k in range(1, len(words)):
            chains.setdefault(words[k], words[k:])
    return chains


def imagenet_chain(name: str) -> tuple[str, ...]:
    """The chain of ImageNet class (or hypernym) ``name`` up to "entity"; ``()`` when
    the name is not in the table."""
    return imagenet_chains().get(name, ())
