"""Decisions over ranked answers, and ImageNet's WordNet hierarchy they can climb."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
import torch
from scipy.stats import binom, norm

from smoothapi import ABSTAIN, LocalModelAdapter, SmoothedClassifier
from smoothapi.adapters.base import Adapter, Answer
from smoothapi.decisions import Ancestor, Flag, TopLabel, Vocabulary, as_decision
from smoothapi.errors import InvalidInputError, JournalError
from smoothapi.journal import Journal
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
    # An API's coarse label above every target is passed over: its finer labels decide.
    answer = [("animal", 0.99), ("mammal", 0.95), ("Egyptian cat", 0.6)]
    assert animals(answer) == "cat" and Ancestor(["animal"])(answer) == "animal"
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


# --- decisions through the smoothed classifier and the journal ---------------------------

SIGMA = 0.25


class Pets(Adapter):
    """A vision API whose answer is drawn by the noise: with the first pixel at 0.5, its
    noisy value gives ``u ~ U(0, 1)``; u < 0.5 answers "Tabby" first, u < 0.8 "Persian",
    else "Dog". So the top label is "Tabby" with p = 0.5, and "is it a cat?" is "cat" with
    p = 0.8 exactly."""

    name, ranks, max_batch = "pets", True, None

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _ranked(image: torch.Tensor) -> tuple:
        u = float(torch.special.ndtr((image[0, 0, 0] - 0.5) / SIGMA))
        if u < 0.5:
            return (("Tabby", 0.9), ("Cat", 0.8), ("Mammal", 0.7))
        if u < 0.8:
            return (("Persian", 0.85), ("Cat", 0.6))
        return (("Dog", 0.9), ("Mammal", 0.8))

    def top_labels(self, images):
        return [self._ranked(x)[0][0] for x in images]

    def ranked_labels(self, image):
        return list(self._ranked(image))

    async def aanswers_or_errors(self, images):
        self.calls += 1
        return [Answer(r[0][0], r[0][1], r) for r in map(self._ranked, images)]


PETS = Vocabulary({"cat": ["tabby", "persian"], "dog": []})


def _image(i: int) -> torch.Tensor:
    image = torch.full((1, 4, 4), 0.5)
    image[0, 3, 3] = i / 1000  # other pixels: another noise stream, not another try
    return image


def _smoothed(journal, decision=None, seed=7) -> SmoothedClassifier:
    return SmoothedClassifier(Pets(), SIGMA, None, batch_size=64, seed=seed,
                              journal=journal, decision=decision)  # fmt: skip


def test_a_decision_is_certified_through_the_classifier_and_keys_its_run(tmp_path):
    top = _smoothed(Journal(tmp_path / "top.sqlite", durability="normal"))
    pets = _smoothed(Journal(tmp_path / "pets.sqlite", durability="normal"), PETS)
    assert "decision" not in top.run_config()  # runs of the top label keep their old keys
    assert top.run_key != pets.run_key and pets.run_config()["decision"] == PETS.identity()
    fine = top.certify(_image(1), n0=20, n=400, alpha=0.001)
    coarse = pets.certify(_image(1), n0=20, n=400, alpha=0.001)
    assert coarse.label == "cat" and fine.label in ("Tabby", ABSTAIN)
    assert coarse.radius > fine.radius  # p = 0.8 against p = 0.5
    with pytest.raises(InvalidInputError, match="ranked"):
        SmoothedClassifier(_TopOnly(), SIGMA, None, decision=PETS)


class _TopOnly(Pets):
    ranks = False


def test_recertifying_a_question_offline_equals_asking_it_live_and_sends_nothing(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", durability="normal")
    top = _smoothed(journal)
    for i in range(3):
        top.certify(_image(i), n0=20, n=200, alpha=0.01)
    sent = top.adapter.calls
    offline = journal.recertify(top.run_key, 0.01, decision=PETS)
    assert top.adapter.calls == sent  # no query
    live = _smoothed(Journal(tmp_path / "other.sqlite"), PETS)  # same seed: same noise
    for i, again in enumerate(offline):
        assert again.certification == live.certify(_image(i), n0=20, n=200, alpha=0.01)
        assert again.questions == 2  # the run's own question and this one
    assert all(r.questions == 2 for r in journal.recertify(top.run_key, 0.01, decision=PETS))
    own = journal.recertify(top.run_key, 0.01)  # the run's own question: nothing new asked
    assert [r.questions for r in own] == [2, 2, 2]
    flags = journal.recertify(top.run_key, 0.01, decision=Flag(["dog"], 0.5))
    assert [r.questions for r in flags] == [3, 3, 3]
    asked = journal.questions(top.run_key)
    assert len(asked) == 3 and all(len(q) == 2 for q in asked.values())


def test_a_journal_without_ranked_answers_re_certifies_its_own_question_only(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the samples table as smoothapi wrote it before
        db.execute("CREATE TABLE samples (run TEXT NOT NULL, image TEXT NOT NULL, attempt TEXT "
                   "NOT NULL, occurrence INTEGER NOT NULL, phase INTEGER NOT NULL, idx INTEGER "
                   "NOT NULL, label TEXT NOT NULL, score REAL, PRIMARY KEY (run, image, "
                   "attempt, occurrence, phase, idx)) WITHOUT ROWID")  # fmt: skip
    journal = Journal(path, durability="normal")
    assert "ranked" not in [r[1] for r in sqlite3.connect(path).execute(
        "PRAGMA table_info(samples)")]  # fmt: skip  # opening to read alters nothing
    smoothed = _smoothed(journal)
    smoothed.certify(_image(1), n0=10, n=50, alpha=0.01)  # the first write adds the column
    with sqlite3.connect(path) as db:  # what an older version left: answers without ranks
        db.execute("UPDATE samples SET ranked = NULL WHERE idx < 5")
    (own,) = journal.recertify(smoothed.run_key, 0.01)
    assert own.certification is not None
    with pytest.raises(JournalError, match="own question only"):
        journal.recertify(smoothed.run_key, 0.01, decision=PETS)


def test_local_models_answer_ranked_and_take_decisions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 30))
    names = [f"class {i}" for i in range(30)]
    adapter = LocalModelAdapter(model, class_names=names)
    (answer,) = asyncio.run(adapter.aanswers_or_errors(torch.rand(1, 1, 4, 4)))
    assert len(answer.ranked) == 20 and answer.label == answer.ranked[0][0]
    assert [s for _, s in answer.ranked] == sorted((s for _, s in answer.ranked), reverse=True)
    assert "ranked_length" not in adapter.identity()
    assert LocalModelAdapter(model, ranked_length=5).identity()["ranked_length"] == 5
    smoothed = SmoothedClassifier(adapter, SIGMA, None, seed=1,
                                  decision=Vocabulary(names[:15], other="rest"))  # fmt: skip
    assert smoothed.predict(torch.rand(1, 4, 4), n=50, alpha=0.1).label in [*names[:15], "rest",
                                                                             ABSTAIN]  # fmt: skip


def test_a_decisions_false_certificate_rate_stays_below_alpha(tmp_path):
    """Paid once for the top label, re-certified offline as "is it a cat?" (true p = 0.8):
    a certificate is false when it names "dog", or a radius beyond sigma * Phi^-1(0.8) (its
    bound on p exceeded the truth). Over 150 independent images at alpha = 0.1 the count of
    false ones is Binomial(150, <= 0.1); the test fails only above its 99.9% quantile (27),
    so its false-alarm rate is below 0.1%. Seeded."""
    journal = Journal(tmp_path / "j.sqlite", durability="normal")
    top = _smoothed(journal, seed=2026)
    for i in range(150):
        top.certify(_image(i), n0=10, n=100, alpha=0.1)
    results = journal.recertify(top.run_key, 0.1, decision=PETS)
    true_radius = SIGMA * float(norm.ppf(0.8))
    false = sum(r.certification.label == "dog" or (r.certification.label == "cat" and
                r.certification.radius > true_radius + 1e-12) for r in results)  # fmt: skip
    certified = sum(r.certification.label == "cat" for r in results)
    assert false <= int(binom.ppf(0.999, 150, 0.1)) == 27
    assert certified >= 140  # the test has power: nearly every image certifies "cat"
