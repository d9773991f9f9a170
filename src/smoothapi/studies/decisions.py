"""Pay once, ask many: six questions certified from one paid run per denoiser setting.

``smoothapi experiment decisions --out results/decisions`` runs, in order:

1. **manifest**: the images (the natural-photo study's 126 test crops of the 7 held-out
   photos at 160 px, and the 7 photos whole at a shorter side of 224 px), each with the
   digest of its pixels;
2. **certify** per setting (no denoiser; the shipped photo denoiser for sigma): ONE paid
   CERTIFY run through a vision API on loopback (Google's gRPC wire format and client, PNG
   images) serving EfficientNet-Lite2 with ``coarse_labels=True``, so its 20 labels mix
   ImageNet classes with their WordNet ancestors scored by summed probability, as
   commercial APIs mix "Egyptian cat" with "Cat" and "Mammal". It certifies the API's
   top label and asks once for the API's answer on each clean image (the ground truth:
   one more query per image, journaled). Every ranked answer is journaled;
3. **questions** per setting, offline: :meth:`~smoothapi.journal.Journal.recertify`
   certifies each question of :func:`questions` from that journal, with no query (no
   adapter is even built; the stage checks that the journal gained no answer). The
   ground truth of a question is its decision applied to the clean answer;
4. **report**: ``OUT/README.md``, certified accuracy at each radius per question and
   setting, the queries paid, and the number of questions ``k`` asked of each image's
   samples (together they hold at ``k * alpha``).

Stages resume as the other studies' do (markers under ``OUT/stages``; a killed paid run
resumes from its journal without paying twice). The journals (``OUT/journals``, large)
are the paid answers; the questions' results (``OUT/questions/*.json``) and the logs are
what the report reads, so a clone without the journals rewrites the report.
``--scale tiny`` (EfficientNet-Lite0, 64-px crops of two photos, n = 24) runs in seconds,
for tests.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import photos as photo_data
from .._images import as_image_tensor
from .._precision import resolve_dtype
from ..adapters import create_adapter
from ..certification import max_certifiable_radius
from ..decisions import Ancestor, Decision, Flag, TopLabel, Vocabulary
from ..errors import InvalidInputError, JournalError
from ..journal import Journal
from ..runs import (
    ABSTAIN_CODE,
    CERTIFY_COLUMNS,
    CLEAN_COLUMNS,
    LogWriter,
    certify_many,
    read_log_rows,
    write_log,
)
from ..sampling import Phase, image_digest
from ..smoothing import RateLimits, SmoothedClassifier
from ..testing import LoopbackProvider
from .snapshots import restore
from .stages import Stages, launch, pick_scale

__all__ = ["DECISION_SCALES", "DecisionScale", "questions", "run_decisions_study"]


@dataclass(frozen=True)
class DecisionScale:
    """Everything that sizes the decisions study."""

    crop_size: int = 160  # the natural-photo study's test crops
    photo_side: int | None = 224  # the whole photos too, at this shorter side (None: not)
    test_photos: tuple[str, ...] | None = None  # None: every held-out ("test") photo
    crops_per_photo: int | None = None  # the first k test crops of each photo (None: all 18)
    model: str = "efficientnet_lite2"  # served on loopback; it sees each image as sent
    sigma: float = 0.25
    n0: int = 20  # the paper's API budget for selection
    n: int = 500
    alpha: float = 0.001
    denoiser: str = "photo-sigma0.25"  # the shipped photo denoiser for sigma
    denoiser_dtype: str = "auto"  # bfloat16 where the CPU has it (2.7x faster), else float32
    radii: tuple[float, ...] = (0.0, 0.25, 0.5)


DECISION_SCALES: dict[str, DecisionScale] = {
    # 2 CPU cores: 133 images x 521 queries x 2 settings (see the report for the time).
    "small": DecisionScale(),
    # Seconds, on two pip-shipped photos: for tests.
    "tiny": DecisionScale(crop_size=64, photo_side=64, test_photos=("chelsea", "coffee"),
                          crops_per_photo=2, model="efficientnet_lite0", n0=4, n=24,
                          alpha=0.05, radii=(0.0, 0.1, 0.25)),  # fmt: skip
}

#: The denoiser settings, each one paid run: name -> whether the shipped denoiser is used.
SETTINGS = {"none": False, "denoiser": True}

#: The 10 categories of the vocabulary question: category -> the WordNet synset whose
#: every name in the hierarchy (itself, the synsets and the ImageNet classes below it) is
#: a synonym. Everyday categories a photo app might ask for, chosen from the hierarchy
#: before any certificate was seen; disjoint subtrees, so no label is in two.
VOCABULARY_SYNSETS = {
    "cat": "feline",
    "dog": "dog",
    "bird": "bird",
    "fish": "fish",
    "insect": "insect",
    "vehicle": "vehicle",
    "clothing": "clothing",
    "food": "food",
    "structure": "structure",
    "furniture": "furniture",
}
#: The coarsest level: WordNet's broad kinds of things that cover ImageNet (990 of its
#: 1,000 classes; the rest are "other": signs, towels, paper, a bubble, a bakery).
KINGDOMS = ("animal", "plant", "fungus", "person", "food", "natural object",
            "geological formation", "artifact")  # fmt: skip
#: How far below WordNet's root the "category" level sits: the depth of the coarsest
#: labels the loopback answers with (``testing._COARSE_MIN_DEPTH``), so the API's top
#: label is at that level or finer.
CATEGORY_DEPTH = 7
#: The flag question's threshold: flagged when an animal label scores at least this.
FLAG_THRESHOLD = 0.5


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def _below(synset: str) -> tuple[list[str], list[str]]:
    """Every name the hierarchy places at or below ``synset``, less those that, matched
    case-insensitively as decisions match labels, also name something outside it (the
    dog "Cardigan" and the sweater "cardigan"); and those left out."""
    from ..zoo.hierarchy import imagenet_chains

    chains = imagenet_chains()
    inside = sorted(name for name, chain in chains.items() if synset in chain)
    outside = {_key(name) for name, chain in chains.items() if synset not in chain}
    return ([name for name in inside if _key(name) not in outside],
            [name for name in inside if _key(name) in outside])  # fmt: skip


def _levels() -> tuple[list[str], list[str]]:
    """The targets of the "parent" level (the parent synset of each ImageNet class) and
    of the "category" level (each class's ancestor :data:`CATEGORY_DEPTH` levels below
    the root, or the class itself when it is shallower)."""
    from ..zoo import imagenet_classes
    from ..zoo.hierarchy import imagenet_chain

    chains = [imagenet_chain(name) for name in imagenet_classes()]
    parents = sorted({chain[1] for chain in chains if len(chain) > 1})
    categories = sorted({chain[len(chain) - CATEGORY_DEPTH] if len(chain) >= CATEGORY_DEPTH
                         else chain[0] for chain in chains if chain})  # fmt: skip
    return parents, categories


def _vocabulary() -> tuple[dict[str, list[str]], list[str]]:
    """The vocabulary question's categories with their synonyms, and the names left out
    (see :func:`_below`)."""
    found = {name: _below(synset) for name, synset in VOCABULARY_SYNSETS.items()}
    return ({name: kept for name, (kept, _) in found.items()},
            sorted(word for _, left in found.values() for word in left))  # fmt: skip


def _left_out(names: list[str]) -> str:
    if not names:
        return ""
    return (f" (left out, as labels match case-insensitively and these also name something "
            f"else: {', '.join(names)})")


@dataclass(frozen=True)
class Question:
    """One question: its name in the report, what it asks, and its decision (``None``:
    the paid run's own question, the API's top label)."""

    name: str
    description: str
    decision: Decision | None

    def truth(self, clean: Any) -> Any:
        """The ground truth: the decision applied to the API's clean answer."""
        return (self.decision or TopLabel())(clean)


def questions() -> list[Question]:
    """The study's six questions, fixed from the hierarchy before any certificate."""
    parents, categories = _levels()
    animals, ambiguous_animals = _below("animal")
    vocabulary, ambiguous = _vocabulary()
    return [
        Question("top label", "the API's top label (the run's own question)", None),
        Question("ancestor: parent",
                 f"Ancestor over the parent synset of every ImageNet class ({len(parents)} "
                 "targets: domestic cat, helmet, coffee, necktie ...), else other",
                 Ancestor(parents, other="other")),
        Question("ancestor: category",
                 f"Ancestor over WordNet's synsets {CATEGORY_DEPTH} levels below its root "
                 f"({len(categories)} targets: animal, device, conveyance, clothing, "
                 "container ...; a shallower class is its own), else other",
                 Ancestor(categories, other="other")),
        Question("ancestor: kingdom",
                 f"Ancestor over {', '.join(KINGDOMS)}, else other",
                 Ancestor(list(KINGDOMS), other="other")),
        Question("vocabulary (10)",
                 "Vocabulary of 10 categories, each with every hierarchy name below its "
                 "synset as synonyms ("
                 + ", ".join(f"{k} = {v}" if k != v else k for k, v in VOCABULARY_SYNSETS.items())
                 + "), else other" + _left_out(ambiguous),
                 Vocabulary(vocabulary, other="other")),
        Question(f"flag: animal >= {FLAG_THRESHOLD:g}",
                 f"Flag: any label at or below 'animal' ({len(animals)} names) scores at "
                 f"least {FLAG_THRESHOLD:g}" + _left_out(ambiguous_animals),
                 Flag(animals, threshold=FLAG_THRESHOLD)),
    ]


@dataclass(frozen=True)
class StudyImage:
    name: str
    photo: str
    box: tuple[int, int, int] | None  # (top, left, side) of a crop; None: the whole photo
    tensor: torch.Tensor

    @property
    def digest(self) -> str:
        return image_digest(self.tensor)


class DecisionsStudy(Stages):
    """The study in ``out``; stages skipped when already done."""

    prefix = "[decisions]"

    def __init__(self, scale: DecisionScale, out: Path, device: str | None = None) -> None:
        super().__init__(out)
        self.scale, self.device = scale, device
        if scale.test_photos is None:
            chosen = photo_data.available_photos("test")
        else:
            have = {p.name: p for p in photo_data.available_photos()}
            chosen = [have[name] for name in scale.test_photos if name in have]
        if not chosen or (scale.test_photos and len(chosen) != len(scale.test_photos)):
            raise InvalidInputError("held-out photos missing: install the dev extra "
                                    "(scikit-image, scikit-learn, matplotlib)")  # fmt: skip
        self.images: list[StudyImage] = []
        pictures = [photo_data.load_photo(p) for p in chosen]
        tiles, where = photo_data.test_crops(pictures, scale.crop_size)
        seen: dict[int, int] = {}
        for tile, (index, top, left, side) in zip(tiles, where, strict=True):
            k = seen[index] = seen.get(index, -1) + 1
            if scale.crops_per_photo is None or k < scale.crops_per_photo:
                self.images.append(StudyImage(f"{chosen[index].name}/crop{k:02d}",
                                              chosen[index].name, (top, left, side),
                                              _tensor(tile.transpose(1, 2, 0))))  # fmt: skip
        if scale.photo_side is not None:
            for photo in chosen:
                whole = photo_data.load_photo(photo, scale.photo_side)
                self.images.append(StudyImage(f"{photo.name}/whole", photo.name, None,
                                              _tensor(whole)))  # fmt: skip
        self.photos = chosen

    # --- paths -----------------------------------------------------------------------

    def key(self, setting: str) -> str:
        return f"{setting}@{self.scale.sigma:g}"

    def journal_path(self, setting: str) -> Path:
        return self.out / "journals" / f"{self.key(setting)}.sqlite"

    def log_path(self, setting: str) -> Path:
        return self.out / "logs" / f"{self.key(setting)}.tsv"

    def questions_path(self, setting: str) -> Path:
        return self.out / "questions" / f"{self.key(setting)}.json"

    # --- stages ----------------------------------------------------------------------

    def write_manifest(self) -> None:
        scale = self.scale
        entries = [{"name": image.name, "photo": image.photo,
                    "box": None if image.box is None else dict(zip(("top", "left", "side"),
                                                                   image.box, strict=True)),
                    "size": list(image.tensor.shape[1:]), "digest": image.digest}
                   for image in self.images]  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "manifest.json").write_text(json.dumps({
            "photos": photo_data.manifest(self.photos), "scale": asdict(scale),
            "images": entries}, indent=1))  # fmt: skip

    def served_model(self) -> Any:
        from ..zoo import load_classifier

        return load_classifier(self.scale.model, device=self.device, resize=False)

    def certify(self, setting: str) -> dict[str, Any]:
        """The one paid run of ``setting``: CERTIFY the API's top label on every image and
        ask once for its clean answer, through the loopback API; every answer journaled."""
        from ..denoisers import load_denoiser

        scale = self.scale
        denoiser = None
        if SETTINGS[setting]:
            denoiser = load_denoiser(scale.denoiser, self.device, scale.denoiser_dtype)
        path, journal_path = self.log_path(setting), self.journal_path(setting)
        path.parent.mkdir(parents=True, exist_ok=True)
        if restore(journal_path):  # a snapshot committed by an earlier session
            print(f"{self.prefix} resuming {journal_path.name} from its snapshot", flush=True)
        sent = 0
        with Journal(journal_path) as journal, \
                LoopbackProvider(self.served_model(), coarse_labels=True) as api:  # fmt: skip
            # The loopback server computes every request on this machine's CPU: a long
            # timeout and 2 requests in flight (as the natural-photo study does).
            adapter = create_adapter("google", endpoint=api.target(), insecure=True,
                                     api_key="loopback", timeout=900)  # fmt: skip
            smoothed = SmoothedClassifier(adapter, scale.sigma, denoiser, batch_size=100,
                                          seed=0, device=self.device, journal=journal,
                                          limits=RateLimits(max_in_flight=2))  # fmt: skip
            with smoothed, open(path.with_suffix(".part"), "w", encoding="utf-8") as f:
                outcomes = certify_many(smoothed, [image.tensor for image in self.images],
                                        scale.n0, scale.n, scale.alpha, shard=False,
                                        clean=True)  # fmt: skip

                def counted(items):
                    nonlocal sent
                    for outcome in items:
                        sent += outcome.queries
                        yield outcome

                write_log(counted(outcomes), LogWriter(f, columns=CERTIFY_COLUMNS + CLEAN_COLUMNS),
                          files=[image.name for image in self.images])  # fmt: skip
            run = smoothed.run_key
        path.with_suffix(".part").rename(path)
        return {"run": run, "queries_sent_this_run": sent, "served": api.stats.images}

    def ask(self, setting: str) -> dict[str, Any]:
        """Every question of :func:`questions`, certified offline from the paid run's
        journal: no adapter is built, and the journal must gain no answer."""
        scale = self.scale
        marker = json.loads(self.marker(f"certify:{self.key(setting)}").read_text())
        path = self.journal_path(setting)
        if not path.exists() and not restore(path):
            raise JournalError(f"{path} is missing: the offline questions read its paid "
                               "answers (bring the journal back, or rerun its certify stage)")
        asked = questions()
        with Journal(path) as journal:
            run = marker["run"]
            paid_before = _answers(journal, run)
            clean = _clean_answers(journal, run)
            order = {image.digest: k for k, image in enumerate(self.images)}
            results: dict[str, Any] = {}
            for question in asked:
                rows: list[dict[str, Any] | None] = [None] * len(self.images)
                for found in journal.recertify(run, scale.alpha, decision=question.decision):
                    k = order.get(found.key.content)
                    if k is None or (found.n0, found.n) != (scale.n0, scale.n):
                        continue  # another attempt (not this study's settings)
                    cert = found.certification
                    if cert is None:
                        raise JournalError(f"{self.images[k].name}: its answers stop short")
                    rows[k] = {"image": self.images[k].name,
                               "truth": question.truth(clean[found.key.content]),
                               "label": None if cert.abstained else cert.label,
                               "radius": float(cert.radius), "p_a_lower": cert.p_a_lower,
                               "questions": found.questions,
                               "attempts": found.attempts}  # fmt: skip
                missing = [self.images[k].name for k, row in enumerate(rows) if row is None]
                if missing:
                    raise JournalError(f"no certificate in {path} for {', '.join(missing)}")
                identity = None if question.decision is None else question.decision.identity()
                results[question.name] = {"description": question.description,
                                          "identity": identity, "rows": rows}  # fmt: skip
            added = _answers(journal, run) - paid_before
        if added:  # cannot happen: recertify sends nothing
            raise JournalError(f"the offline questions added {added} answers to {path}")
        matches = _matches_log(results[asked[0].name]["rows"], self.log_path(setting))
        out = self.questions_path(setting)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"setting": setting, "run": run, "answers_paid": paid_before,
                                   "answers_added_offline": added, "top_matches_log": matches,
                                   "questions": results}))  # fmt: skip
        return {"answers_paid": paid_before, "answers_added_offline": added,
                "questions": len(asked), "top_matches_log": matches}

    # --- report ----------------------------------------------------------------------

    def report(self) -> Path:
        found = {s: json.loads(self.questions_path(s).read_text()) for s in SETTINGS
                 if self.questions_path(s).exists()}  # fmt: skip
        path = self.out / "README.md"
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(report_lines(self, found)) + "\n")
        return path

    def run(self) -> None:
        self.stage("manifest", self.write_manifest)
        for setting in SETTINGS:
            self.stage(f"certify:{self.key(setting)}", partial(self.certify, setting), keep=True)
        for setting in SETTINGS:  # once its paid run has finished (--only may leave it)
            if self.marker(f"certify:{self.key(setting)}").exists():
                self.stage(f"questions:{self.key(setting)}", partial(self.ask, setting),
                           keep=True)  # fmt: skip
        self.report()


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 as the ``(3, H, W)`` float tensor in [0, 1] that is certified."""
    return as_image_tensor(np.ascontiguousarray(pixels))


def _answers(journal: Journal, run: str) -> int:
    """The answers ``run`` holds: every query it paid for."""
    with journal._sql() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM samples WHERE run=?", (run,)).fetchone()
    return int(count)


def _clean_answers(journal: Journal, run: str) -> dict[str, Any]:
    """Pixel digest -> the API's ranked answer on the clean image (the ``clean_answer``
    query of each image, journaled in the paid run)."""
    clean = {}
    for attempt in journal.attempts(run):
        if attempt.method == "clean_answer":
            ranked = journal.ranked(run, attempt.key, Phase.CLEAN_SELECTION).get(0)
            if ranked is None:
                raise JournalError(f"{journal.path}: a clean answer without its ranked labels")
            clean[attempt.key.content] = ranked
    return clean


def _matches_log(rows: list[dict[str, Any]], log: Path) -> bool:
    """Whether the offline top-label certificates and ground truths are the paid run's
    own (its log: certified label, radius, and the clean answer)."""
    logged = {row["file"]: row for row in read_log_rows(log)}
    for row in rows:
        paid = logged[row["image"]]
        label = None if paid["predict"] == str(ABSTAIN_CODE) else paid["predict"]
        if (label != row["label"] or abs(float(paid["radius"]) - row["radius"]) > 1e-9
                or paid["clean"] != ("" if row["truth"] is None else row["truth"])):
            return False
    return True


def certified_accuracy(rows: list[dict[str, Any]], radius: float) -> float:
    """Share of images whose certificate is the ground truth with radius >= ``radius``."""
    hits = [row["label"] is not None and row["label"] == row["truth"]
            and row["radius"] >= radius for row in rows]  # fmt: skip
    return sum(hits) / len(rows) if rows else 0.0


def _table_lines(found: dict[str, Any], names: list[str], settings: list[str],
                 radii: tuple[float, ...]) -> list[str]:  # fmt: skip
    """The report's table: certified accuracy per question, setting and radius."""
    first = next(iter(found.values()))
    header = ["question", "classes", "truth \"other\""]
    for setting in settings:
        header += [f"{setting} r={r:g}" for r in radii]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        rows = first["questions"][name]["rows"]
        truths = [row["truth"] for row in rows]
        cells = [f"`{name}`", str(len(set(truths))),
                 f"{sum(t == 'other' for t in truths)} / {len(truths)}"]
        for setting in settings:
            setting_rows = found[setting]["questions"][name]["rows"]
            cells += [f"{100 * certified_accuracy(setting_rows, r):.1f}%" for r in radii]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _check_lines(study: DecisionsStudy, found: dict[str, Any], settings: list[str],
                 top: str) -> list[str]:  # fmt: skip
    """The report's checks: offline top-label certificates against the paid logs, and the
    clean answers of the two runs against each other."""
    lines = []
    for setting in settings:
        same = "equal" if found[setting].get("top_matches_log") else "DIFFER FROM"
        lines.append(f"- {setting}: the offline `top label` certificates and clean answers "
                     f"{same} the paid run's own (its log, `logs/{study.key(setting)}.tsv`).")
    if len(settings) > 1:
        truths = [[row["truth"] for row in found[s]["questions"][top]["rows"]]
                  for s in settings]  # fmt: skip
        agree = sum(a == b for a, b in zip(*truths, strict=False))
        lines.append(f"- The clean answers (asked in each run) agree on {agree} of "
                     f"{len(truths[0])} images (the API is deterministic on a clean image).")
    return lines


def report_lines(study: DecisionsStudy, found: dict[str, Any]) -> list[str]:
    """The report: settings, the questions, the table, the queries paid, k."""
    lines = _intro_lines(study)
    if not found:
        return [*lines, "No question has been certified yet.", ""]
    first = next(iter(found.values()))
    names = list(first["questions"])
    settings = [s for s in SETTINGS if s in found]
    lines += _table_lines(found, names, settings, study.scale.radii)
    lines += _question_lines(study.scale, first, names)
    lines += _query_lines(study, found, settings, names)
    lines += ["", "## Checks", ""]
    lines += _check_lines(study, found, settings, names[0])
    if study.times:
        lines += ["", "## Stage times (2 CPU cores unless noted)", ""]
        lines += [f"- {name}: {seconds / 60:.1f} min" for name, seconds in study.times.items()]
    lines.append("")
    return lines


def _intro_lines(study: DecisionsStudy) -> list[str]:
    """The report's title and how it was made: the command, the images, the API served, and
    how one paid run per setting answers every question."""
    scale = study.scale
    crops = sum(image.box is not None for image in study.images)
    wholes = len(study.images) - crops
    total = len(study.images)
    return [
        "# Decisions: pay once, ask many",
        "",
        f"`smoothapi experiment decisions --scale {_scale_name(scale)}`: CERTIFY (n0 = "
        f"{scale.n0}, n = {scale.n}, alpha = {scale.alpha:g}, sigma = {scale.sigma:g}) on "
        f"{total} images ({crops} test crops of {len(study.photos)} held-out photos at "
        f"{scale.crop_size} px"
        + (f", and the {wholes} photos whole at a shorter side of {scale.photo_side} px"
           if wholes else "") + "), "
        f"through {scale.model} served as a vision API on loopback (Google's gRPC wire format "
        "and client, PNG images; the model sees each image as sent) with `coarse_labels=True`: "
        "each answer lists 20 labels, ImageNet classes mixed with their WordNet ancestors "
        "scored by summed probability, as commercial APIs mix fine and coarse labels.",
        "",
        "One paid run per setting (no denoiser; the shipped `"
        f"{scale.denoiser}` denoiser, in {resolve_dtype(scale.denoiser_dtype, study.device)}) "
        "certifies the API's top label "
        "and asks once for its answer on each clean image; every other question is "
        "certified offline from that run's journal with `Journal.recertify(run, alpha, "
        "decision=...)`, with no query. Ground truth for a question: its decision applied "
        "to the API's answer on the clean image (one query per image, journaled). Certified "
        "accuracy at r: the share of images whose certificate is that ground truth with "
        "radius >= r.",
        "",
    ]


def _question_lines(scale: DecisionScale, first: dict[str, Any], names: list[str]) -> list[str]:
    """What the table's columns mean, then the questions (``first``: one setting's results,
    for their descriptions) and how to read them."""
    ceiling = max_certifiable_radius(scale.n, scale.alpha, scale.sigma)
    return [
        "",
        "\"classes\": distinct ground-truth answers over the images; \"truth other\": images "
        "whose clean answer the question decides as \"other\" (a certificate of \"other\" "
        f"counts as correct there). With n = {scale.n} no radius exceeds {ceiling:.3f}.",
        "",
        "## Questions",
        "",
        *[f"- `{name}`: {first['questions'][name]['description']}." for name in names],
        "",
        "Fixed from the hierarchy before any certificate was seen. Reading them: a coarse "
        "label scores the summed probability of every class below it, so the API's top "
        "label is usually a coarse synset (`animal`, `clothing`, `device` ...; at least "
        f"{CATEGORY_DEPTH} levels below WordNet's root), not the ImageNet class the "
        "natural-photo study certifies: the `top label` row is not comparable to that "
        "study's. `Ancestor`, `Vocabulary` and `Flag` read past a top label coarser than "
        "their targets: `Ancestor` decides by the highest-ranked label at or below one of "
        "its targets, `Vocabulary` by the highest-ranked label in it, `Flag` by any label.",
    ]


def _query_lines(study: DecisionsStudy, found: dict[str, Any], settings: list[str],
                 names: list[str]) -> list[str]:  # fmt: skip
    """The queries each setting paid for (once) and added offline, and the number ``k`` of
    questions asked of each image's samples, with the joint guarantee at ``k * alpha``."""
    scale, total = study.scale, len(study.images)
    # Each image's k: the questions its samples answered once all were asked (the count a
    # question's row holds is the count when it was asked: the last one's is final).
    k_counts = sorted({max(q["rows"][i]["questions"] for q in found[s]["questions"].values())
                       for s in settings for i in range(total)})  # fmt: skip
    k = max(k_counts)
    lines = ["", "## Queries and the joint guarantee", ""]
    per_image = scale.n0 + scale.n + 1
    for setting in settings:
        data = found[setting]
        lines.append(f"- {setting}: {data['answers_paid']:,} answers paid "
                     f"({total} images x {per_image}: n0 + n + 1 clean), once; "
                     f"the {len(names) - 1} offline questions added "
                     f"{data['answers_added_offline']} answers (no query).")  # fmt: skip
    lines += [
        "",
        f"Each image's samples answered k = {k} questions (the journal counts them: "
        f"`Recertified.questions` of the last one asked is {' or '.join(map(str, k_counts))} "
        "for every image). Each question's "
        f"certificate holds at alpha = {scale.alpha:g} on its own; all {k} together hold at "
        f"k * alpha = {k * scale.alpha:g} (union bound). The two settings are separate runs "
        "(other samples), each with its own k.",
    ]
    return lines


def _scale_name(scale: DecisionScale) -> str:
    return next((name for name, s in DECISION_SCALES.items() if s == scale), "custom")


def run_decisions_study(scale_name: str, out: str | Path, *, device: str | None = None,
                        only: tuple[str, ...] | None = None,
                        fresh: bool = False) -> Path:  # fmt: skip
    """Run (or resume) the decisions study; returns the output folder. ``only`` and
    ``fresh`` as in :func:`~smoothapi.studies.natural_photos.run_photo_study`."""
    scale = pick_scale(DECISION_SCALES, scale_name)
    return launch(lambda: DecisionsStudy(scale, Path(out), device), Path(out), only, fresh)

