"""Certify Azure AI Vision's top tag on one image.

    export AZURE_VISION_ENDPOINT=https://<resource>.cognitiveservices.azure.com
    export AZURE_VISION_KEY=<key>
    python examples/certify_azure.py --image photo.jpg --n 100
    AZURE_VISION_API=4.0 python examples/certify_azure.py   # Image Analysis 4.0

Every query is a billed API call: the script prints the estimated cost first.
"""

from __future__ import annotations

import os

from _provider_example import parse_args, require_env, run

from smoothapi.adapters.azure import ENDPOINT_ENV, KEY_ENV, AzureVisionAdapter

if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    require_env(ENDPOINT_ENV, "azure")
    require_env(KEY_ENV, "azure")
    api = os.environ.get("AZURE_VISION_API", "v3.2")
    run("azure", lambda: AzureVisionAdapter(api=api), args)
