"""Build ``src/smoothapi/data/imagenet_hierarchy.tsv``: each ImageNet class's WordNet chain.

The 1,000 ImageNet-1k classes are WordNet 3.0 noun synsets. This script derives, offline,
each class's chain of hypernyms up to WordNet's root ("entity"), and writes only that
derived table (and WordNet's licence beside it); nothing of either source ships whole.

Sources (both installed from a package registry, neither fetched at run time):
- the class -> synset ids (``n01440764`` ...), in class-index order: the file
  ``timm/data/_info/imagenet_synsets.txt`` of the ``timm`` wheel (Apache-2.0);
  ``pip download --no-deps timm`` and give the wheel with ``--timm-wheel``;
- WordNet 3.0's noun database: Debian's ``wordnet-base`` (``apt-get install
  wordnet-base``: ``/usr/share/wordnet/data.noun``, the WordNet 3.0 licence).

Checked before writing: every synset id names one of the synset's own words as our class
name in ``src/smoothapi/data/imagenet_classes.txt`` (case, spaces, hyphens and
apostrophes aside), or the class is one of the few whose conventional name is not a
WordNet word (listed, with the synset's words, in the output of the check).

    python scripts/build_imagenet_hierarchy.py --timm-wheel timm-*.whl
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "smoothapi" / "data"
WORDNET = Path("/usr/share/wordnet/data.noun")
LICENCE = Path("/usr/share/doc/wordnet-base/copyright")


def read_synsets(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("timm/data/_info/imagenet_synsets.txt").decode()
    ids = text.split()
    if len(ids) != 1000 or not all(re.fullmatch(r"n\d{8}", i) for i in ids):
        raise SystemExit("imagenet_synsets.txt is not 1,000 noun synset ids")
    return ids


def read_wordnet(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (words, hypernym offsets), hypernyms and instance hypernyms alike."""
    nouns = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # the licence header
        fields = line.split(" | ")[0].split()
        offset, count = fields[0], int(fields[3], 16)
        words = [fields[4 + 2 * k].replace("_", " ") for k in range(count)]
        at = 4 + 2 * count
        pointers = int(fields[at])
        parents = [fields[at + 1 + 4 * k + 1] for k in range(pointers)
                   if fields[at + 1 + 4 * k] in ("@", "@i")]  # fmt: skip
        nouns[offset] = (words, parents)
    return nouns


def chain(offset: str, nouns: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """The synset and its hypernyms up to the root, first hypernym at each step."""
    found = [offset]
    while nouns[found[-1]][1]:
        found.append(nouns[found[-1]][1][0])
    return found


def _norm(word: str) -> str:
    return re.sub(r"[\s_\-'.]+", "", word.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-wheel", type=Path, required=True)
    args = parser.parse_args()
    ids = read_synsets(args.timm_wheel)
    nouns = read_wordnet(WORDNET)
    names = (DATA / "imagenet_classes.txt").read_text().splitlines()
    unmatched = []
    rows = ["# index\tclass\tchain: synset id:first word, the class first, up to 'entity'"]
    for index, (wnid, name) in enumerate(zip(ids, names, strict=True)):
        offsets = chain(wnid[1:], nouns)
        words = nouns[offsets[0]][0]
        if _norm(name) not in {_norm(w) for w in words}:
            unmatched.append(f"{index} {name!r}: {', '.join(words)}")
        steps = [f"n{o}:{nouns[o][0][0]}" for o in offsets]
        rows.append(f"{index}\t{name}\t" + "\t".join(steps))
    print(f"{1000 - len(unmatched)} of 1,000 class names are words of their synset; the rest:")
    print("\n".join(f"  {line}" for line in unmatched))
    if len(unmatched) > 50:
        raise SystemExit("too many names differ: the synset ids are not in our class order")
    (DATA / "imagenet_hierarchy.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    licence = LICENCE.read_text().split("Files: debian/*")[0]
    (DATA / "imagenet_hierarchy.LICENSE").write_text(
        "imagenet_hierarchy.tsv is derived from WordNet 3.0 (Debian's wordnet-base) and the\n"
        "ImageNet synset ids listed by timm (Apache-2.0). WordNet's licence:\n\n" + licence,
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
