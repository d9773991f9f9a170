"""Certify Clarifai's general image recognition model's top concept on one image.

    export CLARIFAI_PAT=...     # a personal access token (Clarifai settings > Secrets)
    python examples/certify_clarifai.py --image photo.jpg --n0 20 --n 100

Up to 128 noisy images go out per PostModelOutputs request; every image is billed,
and the cost estimate is printed first.
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters import create_adapter

ENV = ("CLARIFAI_PAT",)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    require_env(ENV, "clarifai")
    run("clarifai", lambda: create_adapter("clarifai"), args)  # model: model_id=..., app_id=...


if __name__ == "__main__":
    main()
