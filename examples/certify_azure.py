"""Certify Azure AI Vision's top tag on photos, behind the shipped photo denoiser.

    export AZURE_VISION_ENDPOINT=https://<resource>.cognitiveservices.azure.com
    export AZURE_VISION_KEY=<key>
    python examples/certify_azure.py                       # two held-out photos, n=100
    python examples/certify_azure.py --image photo.jpg --compare --api-version 4.0
    python examples/certify_azure.py --denoiser none       # the no-denoiser baseline

Every query is a billed API call: the plan and the estimated cost come first, and the
run stops at --max-cost (USD). The free tier allows 20 calls a minute: add --rate 0.33.
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters.azure import ENDPOINT_ENV, KEY_ENV, AzureVisionAdapter


def options(parser) -> None:
    parser.add_argument("--api-version", default="v3.2", help="v3.2 (default) or 4.0")


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], options)
    require_env(ENDPOINT_ENV, "azure")
    require_env(KEY_ENV, "azure")
    run("azure", lambda: AzureVisionAdapter(api=args.api_version), args)
