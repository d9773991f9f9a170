"""Certify Google Cloud Vision's top label on one image.

    export GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account.json   # or:
    export GOOGLE_API_KEY=<an API key allowed to call the Cloud Vision API>
    python examples/certify_google.py --image photo.jpg --n 100

Requests carry up to 16 images; every image is a billed unit, and the script prints
the estimated cost first.
"""

from __future__ import annotations

from _provider_example import parse_args, require_env, run

from smoothapi.adapters.google import GoogleVisionAdapter

CREDENTIAL_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY")

if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    require_env(CREDENTIAL_ENV, "google")
    run("google", lambda: GoogleVisionAdapter(max_results=50), args)
