"""Certify your own question about a vision API's answers, then ask another one for free.

    export GOOGLE_API_KEY=...        # or GOOGLE_APPLICATION_CREDENTIALS
    python examples/certify_question.py                 # two held-out photos, n=100
    python examples/certify_question.py --loopback      # no credentials: a model served here

Question 1 (paid): which of my 10 classes is this photo? (a ``Vocabulary``: the first of
the API's ranked labels that is one of my classes or a synonym, else "other"). Question 2
(free): is any animal label scored at least 0.5? (a ``Flag``), certified afterwards from
the same answers kept in the journal, with no query. Each certificate holds at --alpha on
its own; the two together at 2 x alpha. ``--loopback`` serves EfficientNet-Lite2 on this
machine in Google's wire format, its labels mixing ImageNet classes with their WordNet
ancestors as commercial APIs mix "Cat" and "Mammal".
"""

from __future__ import annotations

import contextlib
import sys

from _provider_example import choose_denoisers, load_images, parse_args, plan, require_env

from smoothapi import SmoothedClassifier
from smoothapi.adapters import create_adapter
from smoothapi.decisions import Flag, Vocabulary
from smoothapi.dispatch import RateLimits
from smoothapi.errors import BudgetExceededError
from smoothapi.journal import Journal
from smoothapi.runs import certify_many
from smoothapi.sampling import image_digest

CREDENTIAL_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY")

#: Your classes, each with the labels that mean it (matched case-insensitively): words a
#: commercial API uses ("Cat", "Felidae") and ImageNet / WordNet names ("domestic cat").
VOCABULARY = {
    "cat": ["cat", "kitten", "felidae", "feline", "domestic cat", "small to medium-sized cats"],
    "dog": ["dog", "puppy", "canidae", "canine", "dog breed"],
    "bird": ["bird", "beak", "songbird"],
    "person": ["person", "people", "human", "face", "astronaut", "smile"],
    "vehicle": ["vehicle", "car", "motor vehicle", "aircraft", "spacecraft", "rocket",
                "conveyance"],
    "building": ["building", "house", "architecture", "tower", "dwelling", "palace"],
    "plant": ["plant", "flower", "tree", "flowering plant", "petal", "vascular plant"],
    "food": ["food", "dish", "drink", "beverage", "coffee", "espresso", "fruit", "vegetable"],
    "clothing": ["clothing", "suit", "tie", "necktie", "uniform", "hat", "helmet", "garment"],
    "device": ["device", "machine", "tool", "instrument", "equipment", "gadget"],
}
ANIMALS = "animal,mammal,vertebrate,carnivore,cat,dog,bird,pet,wildlife"


def options(parser) -> None:
    parser.add_argument("--endpoint", default=None, help="host:port of another gRPC endpoint")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC to --endpoint (an emulator or a loopback server)")
    parser.add_argument("--loopback", action="store_true",
                        help="serve --loopback-model on this machine as the API (no "
                             "credentials, nothing leaves the machine, price 0)")
    parser.add_argument("--loopback-model", default="efficientnet_lite2",
                        help="the zoo model --loopback serves (default: efficientnet_lite2)")
    parser.add_argument("--flag", default=ANIMALS, metavar="LABEL,...",
                        help=f"question 2's labels (default: {ANIMALS})")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="question 2 flags a label scored at least this (default: 0.5)")
    parser.add_argument("--price", type=float, default=None,
                        help="USD per 1,000 images (default: Google's listed price; 0 with "
                             "--loopback)")


def cell(certification) -> str:
    if certification is None:
        return "-"
    if certification.abstained:
        return "abstain"
    return f"{str(certification.label)[:16]} r={certification.radius:.2f}"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    if args.loopback:
        args.price = 0.0 if args.price is None else args.price
    else:
        require_env(CREDENTIAL_ENV, "google")
    names, images = load_images(args)
    denoiser = list(choose_denoisers(args).values())[-1]  # the one asked for (no --compare)
    per_1000 = plan("google", args, len(images), 1)
    journal = args.journal or "certify_question.sqlite"
    vocabulary = Vocabulary(VOCABULARY, other="other")
    flag = Flag([label for label in args.flag.split(",") if label], threshold=args.threshold)
    with contextlib.ExitStack() as stack:
        endpoint = {"endpoint": args.endpoint, "insecure": args.insecure} if args.endpoint else {}
        api = None
        if args.loopback:
            from smoothapi.testing import LoopbackProvider
            from smoothapi.zoo import load_classifier

            api = stack.enter_context(LoopbackProvider(load_classifier(args.loopback_model),
                                                       coarse_labels=True))  # fmt: skip
            endpoint = {"endpoint": api.target(), "insecure": True, "api_key": "loopback"}
        adapter = create_adapter("google", max_results=50, **endpoint)

        # Question 1, paid: n0 + n queries per image, every ranked answer journaled.
        outcomes = []
        cap = None if args.yes or not per_1000 else args.max_cost
        with SmoothedClassifier(adapter, args.sigma, denoiser, seed=args.seed, journal=journal,
                                limits=RateLimits(requests_per_second=args.rate),
                                decision=vocabulary) as smoothed:  # fmt: skip
            try:
                for outcome in certify_many(smoothed, images, args.n0, args.n, args.alpha,
                                            max_cost=cap, price_per_1000=per_1000,
                                            progress=True):  # fmt: skip
                    outcomes.append(outcome)
            except BudgetExceededError as exc:
                print(f"stopped at the cost cap: {exc}")
            sent, run = smoothed.stats.images, smoothed.run_key

        # Question 2, free: the same answers, read from the journal; no query is sent.
        with Journal(journal) as kept:
            again = kept.recertify(run, args.alpha, decision=flag)
        mine = {r.key.content: r for r in again if (r.n0, r.n) == (args.n0, args.n)}
        free = [mine.get(image_digest(image)) for image in images]

        print(f"{'image':<16}{'1: my classes (paid)':>26}{'2: animal flag (free)':>26}")
        for i, name in enumerate(names):
            paid = outcomes[i].result if i < len(outcomes) else None
            offline = free[i].certification if free[i] is not None else None
            print(f"{name[:16]:<16}{cell(paid):>26}{cell(offline):>26}")
        k = max((r.questions for r in free if r is not None), default=1)
        print(f"queries: {sent} sent for question 1 (answers already in the journal are "
              f"free); question 2: none, read from {journal}")
        if api is not None:
            print(f"loopback server: {api.stats.images} images answered in all")
        print(f"k = {k} questions of the same samples: each certificate holds at alpha = "
              f"{args.alpha:g}, all {k} together at {k} x alpha = {k * args.alpha:g}")


if __name__ == "__main__":
    sys.exit(main())
