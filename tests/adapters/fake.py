"""A RemoteAdapter whose transport is a Python function: the shared machinery under test."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from smoothapi.adapters.encoding import ImageLimits
from smoothapi.adapters.remote import RemoteAdapter, rank


def brightness_response(image_bytes: bytes) -> dict:
    """A provider that labels an image "dark" or "bright" by its mean pixel value."""
    mean = float(np.asarray(Image.open(io.BytesIO(image_bytes)).convert("L")).mean()) / 255
    return {"labels": [{"name": "bright", "score": mean}, {"name": "dark", "score": 1 - mean}]}


class FakeAdapter(RemoteAdapter):
    name = "fake"
    max_batch = 4
    limits = ImageLimits(max_bytes=50_000, min_side=10, max_side=400)

    def __init__(self, respond=brightness_response, **options):
        super().__init__(**options)
        self.respond = respond
        self.requests: list[list[bytes]] = []

    @staticmethod
    def parse(raw):
        return rank((item["name"], item["score"]) for item in raw.get("labels", []))

    async def _send(self, images):
        self.requests.append(list(images))
        return [self.respond(image) for image in images]


class Crash(BaseException):
    """Stands for the process dying mid-run (a BaseException, as KeyboardInterrupt and
    SystemExit are: the adapter maps every Exception its transport raises into the error
    tree, and a crash must not become a provider error)."""


class CrashingAdapter(FakeAdapter):
    """Answers concurrently (requests may complete out of order), then fails as a crash
    would once it has answered ``budget`` requests."""

    max_in_flight = 4

    def __init__(self, budget=10**9):
        super().__init__()
        self.budget = budget

    async def _send(self, images):
        if len(self.requests) >= self.budget:
            raise Crash
        return await super()._send(images)
