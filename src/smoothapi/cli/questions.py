"""The question certified, from the command line: ``--decision SPEC``, and ``certify
--from-journal`` (another question asked offline of the answers a journal keeps).

    smoothapi certify --api azure photos/ --sigma 0.25 --decision vocabulary:classes.txt \
        --other other --journal run.sqlite
    smoothapi certify --from-journal run.sqlite --decision flag:weapons.txt --alpha 0.001

SPEC is ``top`` (default: the adapter's top label), ``vocabulary:FILE`` (one class a line,
optionally ``class: synonym, synonym``), ``flag:FILE`` (one label a line; ``--flag-threshold``)
or ``ancestor:cat,dog,bird`` (ImageNet WordNet synsets); ``--other LABEL`` is what a
vocabulary or an ancestor decides when nothing matches (default: no decision). In the files,
blank lines and lines starting with ``#`` are ignored. See :mod:`smoothapi.decisions`.

``--from-journal`` sends no query and needs no adapter or image: each CERTIFY attempt of the
journal's run is certified again from its kept answers (:meth:`Journal.recertify
<smoothapi.journal.Journal.recertify>`), which records the question asked. Each certificate
holds at ``alpha``; the ``k`` questions asked of the same samples hold jointly at
``k * alpha``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from ..certification import check_alpha, check_count
from ..decisions import Ancestor, Decision, Flag, TopLabel, Vocabulary
from ..errors import InvalidInputError, JournalError
from ..journal import OWN_QUESTION, Journal, Recertified
from ..runs import ABSTAIN_CODE, text_cell

__all__ = [
    "FROM_JOURNAL_COLUMNS",
    "add_decision_options",
    "describe",
    "parse_decision",
    "questions_summary",
    "run_from_journal",
]

KINDS = "top, vocabulary:FILE, flag:FILE or ancestor:NAME,NAME,..."
#: The rows of ``certify --from-journal``: one per CERTIFY attempt of the run.
FROM_JOURNAL_COLUMNS = ("idx", "image", "predict", "radius", "n0", "n", "questions")
EXIT_NOT_CERTIFIED = 1  # the journal cannot answer the question asked (no ranked answers)
#: Options of a live run that mean nothing with --from-journal (sigma, seed ... are the run's).
LIVE_ONLY = ("model", "api", "sigma", "journal", "denoiser", "seed", "batch_size", "max_side",
             "radius", "record", "replay", "url", "max_cost", "max_queries")  # fmt: skip


# --- the options ---------------------------------------------------------------------------


def add_decision_options(parser: argparse.ArgumentParser, certify: bool) -> None:
    """``--decision``, ``--other``, ``--flag-threshold``; for certify also ``--from-journal``
    and ``--run``."""
    group = parser.add_argument_group("the question certified (smoothapi.decisions)")
    group.add_argument("--decision", default=None, metavar="SPEC",
                       help=f"what each ranked answer counts as: {KINDS} (default: top, the "
                            "adapter's top label). Files: one class a line (a vocabulary line "
                            "may be 'class: synonym, synonym'); blank and # lines ignored")
    group.add_argument("--other", default=None, metavar="LABEL",
                       help="vocabulary, ancestor: the class of an answer that matches none "
                            "(default: no decision, never certified)")
    group.add_argument("--flag-threshold", type=float, default=None, metavar="T",
                       help="flag: a label flags the answer when it scores at least T "
                            "(default: 0.5)")
    if certify:
        group.add_argument("--from-journal", default=None, metavar="FILE",
                           help="no query: certify each CERTIFY attempt of the journal's run "
                                "again from the answers it keeps (give --decision to ask "
                                "another question; no IMAGES, --sigma or --model/--api)")
        group.add_argument("--run", default=None, metavar="KEY_PREFIX",
                           help="with --from-journal: the run, when the journal holds several")


def parse_decision(spec: str | None, other: str | None = None,
                   flag_threshold: float | None = None) -> Decision | None:  # fmt: skip
    """The :class:`~smoothapi.decisions.Decision` of a ``--decision`` spec; ``None`` for the
    adapter's top label (``top``, or no spec). Raises InvalidInputError, in one line."""
    kind, colon, value = (spec or "top").strip().partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind not in ("top", "vocabulary", "flag", "ancestor"):
        raise InvalidInputError(f"unknown --decision {spec!r}: give {KINDS}")
    if other is not None and kind not in ("vocabulary", "ancestor"):
        raise InvalidInputError(f"--other applies to --decision vocabulary:FILE and "
                                f"ancestor:NAMES, not {kind}")  # fmt: skip
    if flag_threshold is not None and kind != "flag":
        raise InvalidInputError(f"--flag-threshold applies to --decision flag:FILE, not {kind}")
    if kind == "top":
        if colon:
            raise InvalidInputError(f"--decision top takes nothing after it, got {spec!r}")
        return None
    if not value:
        what = "NAME,NAME,..." if kind == "ancestor" else "FILE"
        raise InvalidInputError(f"--decision {kind} needs {what}: --decision {kind}:{what}")
    if kind == "ancestor":
        targets = [name.strip() for name in value.split(",") if name.strip()]
        return Ancestor(targets, other=other)
    lines = _lines(value, kind)
    if kind == "flag":
        return Flag(lines, 0.5 if flag_threshold is None else flag_threshold)
    classes: dict[str, list[str]] = {}
    for line in lines:
        name, _, synonyms = line.partition(":")
        if not name.strip():
            raise InvalidInputError(f"{value}: a line has synonyms but no class: {line!r}")
        words = classes.setdefault(name.strip(), [])
        words += [word.strip() for word in synonyms.split(",") if word.strip()]
    return Vocabulary(classes, other=other)


def _lines(path: str, kind: str) -> list[str]:
    """The lines of a ``--decision`` file that say something (no blank or # lines)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise InvalidInputError(f"--decision {kind}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidInputError(f"--decision {kind}: cannot read {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        what = "class" if kind == "vocabulary" else "label"
        raise InvalidInputError(f"--decision {kind}: {path} names no {what} (one a line; "
                                "blank and # lines are ignored)")  # fmt: skip
    return lines


def decision_from_args(args: argparse.Namespace) -> Decision | None:
    """The decision ``args`` ask for (``None``: the adapter's top label)."""
    return parse_decision(getattr(args, "decision", None), getattr(args, "other", None),
                          getattr(args, "flag_threshold", None))  # fmt: skip


# --- saying which question -----------------------------------------------------------------


def describe(question: Decision | Mapping[str, Any] | None) -> str:
    """A short name of a question: a decision, its identity (as a journal keeps it), or
    ``None`` (the adapter's top label)."""
    if isinstance(question, Decision):
        question = question.identity()
    identity = dict(OWN_QUESTION if question is None else question)
    kind = identity.get("decision")
    other = identity.get("other")
    other_text = "none" if other is None else json.dumps(other)
    if kind == "top":
        renamed = identity.get("label_map")
        return "top label" + (f" (renamed: {len(renamed)} label(s))" if renamed else "")
    if kind == "vocabulary":
        return f"vocabulary ({len(identity.get('classes', {}))} classes, other={other_text})"
    if kind == "flag":
        labels = identity.get("labels", [])
        return (f"flag ({len(labels)} label(s) at score >= {identity.get('threshold'):g}: "
                f"{json.dumps(identity.get('flagged'))} / {json.dumps(identity.get('clear'))})")
    if kind == "ancestor":
        return f"ancestor ({', '.join(identity.get('targets', []))}; other={other_text})"
    if kind == "function":
        return f"function {identity.get('name')}"
    return json.dumps(identity, sort_keys=True)


def run_summary(key: str, config: Mapping[str, Any], attempts: int | None = None,
                question: bool = True) -> str:  # fmt: skip
    """One run of a journal in a few words: key, adapter, sigma, seed (and question)."""
    adapter = config.get("adapter")
    name = adapter.get("adapter", "?") if isinstance(adapter, Mapping) else adapter
    denoiser = config.get("denoiser")
    parts = [f"{name}", f"sigma {config.get('sigma')}", f"seed {config.get('seed')}",
             f"denoiser {denoiser[:8] if isinstance(denoiser, str) else 'none'}"]
    if question:
        parts.append(f"question: {describe(config.get('decision'))}")
    if attempts is not None:
        parts.append(f"{attempts} CERTIFY attempt(s)")
    return f"{key[:12]} ({', '.join(parts)})"


# --- certify --from-journal ----------------------------------------------------------------


def check_from_journal_args(args: argparse.Namespace) -> None:
    """Refuse what a run from the journal alone cannot use: images and the live options."""
    if args.images is not None:
        raise InvalidInputError(f"--from-journal sends no query and reads no image: give no "
                                f"IMAGES (got {args.images})")  # fmt: skip
    given = [f"--{name.replace('_', '-')}" for name in LIVE_ONLY
             if getattr(args, name, None) not in (None, False, [])]  # fmt: skip
    if given:
        raise InvalidInputError(f"{', '.join(given)} do(es) not apply with --from-journal: "
                                "the run's own settings are in the journal")  # fmt: skip


def _pick_run(journal: Journal, prefix: str | None) -> str:
    runs = journal.runs()
    if not runs:
        raise InvalidInputError(f"the journal {journal.path} holds no run")
    tried = Counter(a.run for a in journal.attempts() if a.method == "certify")

    def listed(keys: Sequence[str]) -> str:
        return "; ".join(run_summary(key, runs[key], tried[key]) for key in keys)

    if prefix is not None:
        found = [key for key in runs if key.startswith(prefix.strip())]
        if len(found) == 1:
            return found[0]
        why = "no run" if not found else f"{len(found)} runs"
        raise InvalidInputError(f"--run {prefix}: {why} of {journal.path} start(s) with it; "
                                f"its runs: {listed(found or list(runs))}")  # fmt: skip
    if len(runs) > 1:
        raise InvalidInputError(f"the journal {journal.path} holds {len(runs)} runs: give --run "
                                f"KEY_PREFIX, one of: {listed(list(runs))}")  # fmt: skip
    return next(iter(runs))


def _row(index: int, found: Recertified, run: str, alpha: float, detail: bool) -> dict[str, Any]:
    result = found.certification
    predict: Any = None
    if result is not None:
        abstained = result.abstained
        predict = (None if detail else ABSTAIN_CODE) if abstained else _json_label(result.label)
    row: dict[str, Any] = {
        "idx": index, "image": found.key.digest if detail else found.key.digest[:12],
        "predict": predict, "radius": None if result is None else float(result.radius),
        "n0": found.n0, "n": found.n, "questions": found.questions,
    }  # fmt: skip
    if detail:
        row.update(run=run, pixels=found.key.content or found.key.digest,
                   answered=list(found.answered), complete=found.complete, alpha=alpha,
                   attempts=found.attempts)  # fmt: skip
        if result is not None:
            row.update(p_a_lower=result.p_a_lower, sigma=result.sigma,
                       counts={str(k): int(v) for k, v in
                               sorted(result.counts.items(), key=lambda kv: -kv[1])})  # fmt: skip
    return row


def _json_label(label: Any) -> Any:
    return label if label is None or isinstance(label, (str, int, float, bool)) else str(label)


def _write(out: TextIO, fmt: str, rows: list[dict[str, Any]]) -> None:
    columns = FROM_JOURNAL_COLUMNS
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row) + "\n")
    elif fmt == "tsv":
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    else:
        cells = [list(columns)] + [[text_cell(c, row.get(c)) for c in columns] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            out.write("  ".join(f"{cell:<{w}}" for cell, w in zip(line, widths, strict=True))
                      .rstrip() + "\n")  # fmt: skip
    out.flush()


def run_from_journal(args: argparse.Namespace, out_file: Callable[[str | None], Any]) -> int:
    """``certify --from-journal``: every CERTIFY attempt of the run certified again from the
    journal alone, for ``--decision`` (default: the run's own question); ``out_file`` opens
    the log. Exit 1 when the journal cannot answer the question (no ranked answers kept)."""
    check_from_journal_args(args)
    decision = decision_from_args(args)
    alpha = check_alpha(args.alpha)
    n0 = None if args.n0 is None else check_count("n0", args.n0)
    n = None if args.n is None else check_count("n", args.n)
    path = args.from_journal
    if not os.path.isfile(path):
        raise InvalidInputError(f"journal not found: {path}")
    with Journal(path) as journal:
        run = _pick_run(journal, args.run)
        config = journal.runs()[run]
        if decision is None and args.decision is not None and "decision" in config:
            decision = TopLabel()  # `--decision top` of a run that asked another question
        own = describe(config.get("decision"))
        asked = own if decision is None else describe(decision)
        whose = "the run's own" if asked == own else f"the run certified {own}"
        say(f"from the journal {path}, run {run_summary(run, config, question=False)}: "
            f"question: {asked} ({whose}); alpha={alpha:g}; no query is sent")
        try:
            found = journal.recertify(run, alpha, n0, n, decision=decision)
        except JournalError as exc:
            print(f"smoothapi: error: {exc}", file=sys.stderr, flush=True)
            return EXIT_NOT_CERTIFIED
    if not found:
        raise InvalidInputError(f"run {run[:12]} of {path} has no CERTIFY attempt to certify "
                                "again (smoothapi certify without --radius makes them)")
    rows = [_row(i, r, run, alpha, args.format == "json") for i, r in enumerate(found)]
    with out_file(args.output) as out:
        _write(out, args.format, rows)
    for index, result in enumerate(found):
        if not result.complete:
            say(f"attempt {index} ({result.key.digest[:12]}) stopped short: "
                f"{result.answered[0]} + {result.answered[1]} of {result.n0} + {result.n} "
                "answers kept, so no certificate")
    say(statistics_line(found, alpha))
    return 0


def statistics_line(found: Sequence[Recertified], alpha: float) -> str:
    """What the certificates of ``found`` hold at, alone and together."""
    k = max((r.questions for r in found), default=1)
    done = sum(r.certification is not None for r in found)
    line = (f"{done} of {len(found)} attempt(s) certified from the journal, no query sent; "
            f"each certificate holds at alpha={alpha:g}")
    if k > 1:
        line += (f"; {k} questions were asked of the same samples: keeping all their answers "
                 f"holds jointly at {k} x {alpha:g} = {k * alpha:g}")
    else:
        line += "; this is the only question asked of these samples (k = 1)"
    tries = max((r.attempts for r in found), default=1)
    if tries > 1:
        line += (f"; some images were tried {tries} times in the journal: the best of "
                 f"{tries} tries holds at {tries} x {alpha:g}")
    return line


# --- analyze --journal ---------------------------------------------------------------------


def questions_summary(path: str | os.PathLike) -> list[str]:
    """Per run of a journal: its own question, each other asked offline (of how many
    attempts), and the resulting ``k``: keeping all the answers holds at ``k x alpha``."""
    with Journal(path) as journal:
        runs, asked, attempts = journal.runs(), journal.questions(), journal.attempts()
    lines = []
    for run, config in runs.items():
        own = json.dumps(config.get("decision", OWN_QUESTION), sort_keys=True)
        per_question: Counter[str] = Counter()
        per_attempt: dict[Any, set[str]] = {}
        for (asked_run, key), identities in asked.items():
            if asked_run != run:
                continue
            others = {json.dumps(i, sort_keys=True) for i in identities} - {own}
            per_attempt[key] = others
            per_question.update(others)
        line = f"run {run[:12]} questions: its own, {describe(json.loads(own))}"
        if not per_question:
            lines.append(line + "; none other asked offline (k = 1)")
            continue
        others_text = "; ".join(f"{describe(json.loads(q))} of {count} attempt(s)"
                                for q, count in per_question.items())  # fmt: skip
        k = 1 + max(len(others) for others in per_attempt.values())
        alphas = [float(a.settings["alpha"]) for a in attempts
                  if a.run == run and a.settings.get("alpha") is not None]  # fmt: skip
        alpha = f"{max(alphas):g}" if alphas else "alpha"
        joint = f" = {k * float(alpha):g}" if alphas else ""
        lines.append(f"{line}; asked offline: {others_text}; k = {k} questions of the same "
                     f"samples: keeping all answers holds at {k} x {alpha}{joint}")
    return lines


def say(line: str) -> None:
    print(f"smoothapi: {line}", file=sys.stderr, flush=True)
