"""Certify Amazon Rekognition's top label (DetectLabels) on one image.

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1
    # or: export AWS_PROFILE=my-profile
    python examples/certify_aws.py --image photo.jpg --n0 20 --n 100

Every query is one billed DetectLabels call; the cost estimate is printed first.
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters import create_adapter

ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    require_env(ENV, "aws")
    run("aws", lambda: create_adapter("aws"), args)  # region: AWS_REGION, AWS_DEFAULT_REGION


if __name__ == "__main__":
    main()
