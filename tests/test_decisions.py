"""Decisions over ranked answers, and ImageNet's WordNet hierarchy they can climb."""

from __future__ import annotations

import json

import pytest

from smoothapi.decisions import Ancestor, Flag, TopLabel, Vocabulary, as_decision
from smoothapi.errors import InvalidInputError
from smoothapi.zoo import imagenet_classes
from smoothapi.zoo.hierarchy import imagenet_chain, imagenet_chains

ANSWER = [("Cat", 0.97), ("Mammal", 0.95), ("Whiskers", 0.90), ("Knife", 0.31)]


def test_top_label_is_the_default_and_renames_through_the_label_map():
    assert as_decision(None)(ANSWER) == "Cat"
    assert as_decision(None, {"Cat": "cat"})(ANSWER) == "cat"
    assert TopLabel()([]) is None  # an empty answer decides nothing


def test_vocabulary_takes_the_highest_ranked_label_it_knows():
    pets = Vocabulary({"cat": ["kitten", "Cat"], "dog": ["puppy"]}, other="other")
    assert pets(ANSWER) == "cat"
    assert pets([("Whiskers", 0.9), ("PUPPY ", 0.8), ("cat", 0.7)]) == "dog"
    assert pets([("Car", 0.99)]) == "other"
    strict = Vocabulary(["mammal"], min_score=0.96)
    assert strict(ANSWER) is None  # "Mammal" scores 0.95: below the floor
    with pytest.raises(InvalidInputError, match="synonym of both"):
        Vocabulary({"cat": ["pet"], "dog": ["pet"]})


def test_flag_fires_at_the_threshold_and_not_below():
    weapons = Flag(["knife", "gun"], threshold=0.31)
    assert weapons(ANSWER) == "flagged"
    assert Flag(["knife"], threshold=0.32)(ANSWER) == "not flagged"
    assert Flag(["knife"], 0.3, flagged=True, clear=False)(ANSWER) is True


def test_ancestor_climbs_imagenet_labels_to_the_nearest_target():
    animals = Ancestor(["cat", "dog", "bird"], other="something else")
    assert animals([("Egyptian cat", 0.6), ("golden retriever", 0.3)]) == "cat"
    assert animals([("unknown word", 0.9), ("golden retriever", 0.3)]) == "dog"
    assert animals([("goldfish", 0.9)]) == "something else"
    assert Ancestor(["mammal"])([("cat", 0.9)]) == "mammal"  # a coarse label climbs too
    with pytest.raises(InvalidInputError, match="'kitty'"):
        Ancestor(["cat", "kitty"])


def test_identities_are_json_and_differ_when_the_decisions_differ():
    decisions = [TopLabel(), TopLabel({"Cat": "cat"}), Vocabulary(["cat"]),
                 Vocabulary(["cat"], other="other"), Flag(["knife"]), Flag(["knife"], 0.8),
                 Ancestor(["cat"]), as_decision(lambda ranked: None)]  # fmt: skip
    keys = [json.dumps(d.identity(), sort_keys=True) for d in decisions]
    assert len(set(keys)) == len(keys)
    assert "Flag(" in repr(Flag(["knife"]))
    with pytest.raises(InvalidInputError, match="label_map"):
        as_decision(Flag(["knife"]), {"a": "b"})


def test_the_hierarchy_covers_every_class_up_to_wordnets_root():
    classes = imagenet_classes()
    assert len(classes) == 1000
    for name in classes:
        chain = imagenet_chain(name)
        assert chain[0] == name and chain[-1] == "entity", name
    assert imagenet_chain("Egyptian cat")[:8] == (
        "Egyptian cat", "domestic cat", "cat", "feline", "carnivore", "placental", "mammal",
        "vertebrate")  # fmt: skip
    assert "animal" in imagenet_chain("tench") and "artifact" in imagenet_chain("crane")
    assert imagenet_chain("not a class") == ()
    assert len(imagenet_chains()) > 1000  # the classes and their hypernyms
