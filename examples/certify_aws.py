"""Certify Amazon Rekognition's top label (DetectLabels) on photos, denoised.

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1
    # or: export AWS_PROFILE=my-profile
    python examples/certify_aws.py                         # two held-out photos, n=100
    python examples/certify_aws.py --image photo.jpg --compare

Every query is one billed DetectLabels call. The plan and the estimated cost come
first, and the run stops at --max-cost (USD).
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters import create_adapter

ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")


def options(parser) -> None:
    parser.add_argument("--region", default=None, help="default: AWS_REGION / the profile's")
    parser.add_argument("--endpoint-url", default=None, help="another Rekognition endpoint")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    require_env(ENV, "aws")
    endpoint = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    run("aws", lambda: create_adapter("aws", region_name=args.region, **endpoint), args)


if __name__ == "__main__":
    main()
