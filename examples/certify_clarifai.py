"""Certify Clarifai's general image recognition model's top concept on photos, denoised.

    export CLARIFAI_PAT=...     # a personal access token (Clarifai settings > Secrets)
    python examples/certify_clarifai.py                    # two held-out photos, n=100
    python examples/certify_clarifai.py --image photo.jpg --compare

Up to 128 noisy images go out per PostModelOutputs request; every image is billed.
The plan and the estimated cost come first, and the run stops at --max-cost (USD).
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters import create_adapter

ENV = ("CLARIFAI_PAT",)


def options(parser) -> None:
    parser.add_argument("--model-id", default="general-image-recognition")
    parser.add_argument("--user-id", default="clarifai", help="the model owner")
    parser.add_argument("--app-id", default="main")
    parser.add_argument("--endpoint", default=None, help="host:port of another gRPC endpoint")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC to --endpoint (a loopback server)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], options)
    require_env(ENV, "clarifai")
    model = dict(model_id=args.model_id, user_id=args.user_id, app_id=args.app_id)
    if args.endpoint:
        model.update(target=args.endpoint, insecure=args.insecure)
    run("clarifai", lambda: create_adapter("clarifai", **model), args)


if __name__ == "__main__":
    main()
