"""Certify Google Cloud Vision's top label on photos, behind the shipped photo denoiser.

    export GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account.json   # or:
    export GOOGLE_API_KEY=<an API key allowed to call the Cloud Vision API>
    python examples/certify_google.py                      # two held-out photos, n=100
    python examples/certify_google.py --image photo.jpg --compare

Requests carry up to 16 images; every image is a billed unit. The plan and the
estimated cost come first, and the run stops at --max-cost (USD).
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters import create_adapter

CREDENTIAL_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY")


def options(parser) -> None:
    parser.add_argument("--model-id", default=None, help="Feature.model, e.g. builtin/latest")
    parser.add_argument("--endpoint", default=None, help="host:port of another gRPC endpoint")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC to --endpoint (an emulator or a loopback server)")


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], options)
    require_env(CREDENTIAL_ENV, "google")
    endpoint = {"endpoint": args.endpoint, "insecure": args.insecure} if args.endpoint else {}
    run("google", lambda: create_adapter("google", max_results=50, model=args.model_id,
                                         **endpoint), args)
