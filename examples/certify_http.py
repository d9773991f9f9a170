"""Certify your own model server (any HTTP vision API) on photos, behind the photo denoiser.

    export MY_API_KEY=...       # sent as a header, read from the environment
    python examples/certify_http.py --url https://models.example.com/v1/classify \\
        --header-env Authorization=MY_API_KEY --price 0.5

The server takes one image (PNG bytes) per POST and answers
``{"labels": [{"label": ..., "score": ...}, ...]}``; see HTTPAdapter for other shapes.
The plan and the estimated cost (at --price USD per 1,000 images) come first.
"""

from __future__ import annotations

import sys

from _provider_example import parse_args, run

from smoothapi.adapters import create_adapter


def options(parser) -> None:
    parser.add_argument("--url", required=True, help="the classification endpoint")
    parser.add_argument("--header-env", action="append", default=[], metavar="NAME=VAR",
                        help="a request header whose value is environment variable VAR")
    parser.add_argument("--price", type=float, default=0.0,
                        help="USD per 1,000 images (default: 0, your own server)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    pairs = [h.partition("=") for h in args.header_env]
    if any(not name or not var for name, _, var in pairs):
        sys.exit("--header-env takes NAME=VAR")
    headers = {name: var for name, _, var in pairs}
    run("http", lambda: create_adapter("http", url=args.url, header_env=headers), args)


if __name__ == "__main__":
    main()
