"""Run by test_journal.py, also in a child process that SIGKILLs itself mid-run."""

from __future__ import annotations

import os
import signal

import torch

from smoothapi import SmoothedClassifier
from tests.adapters.fake import FakeAdapter


class Killer(FakeAdapter):
    max_in_flight = 3

    def __init__(self, kill_after=None):
        super().__init__()
        self.kill_after = kill_after

    async def _send(self, images):
        if self.kill_after is not None and len(self.requests) >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return await super()._send(images)


def run(journal, kill_after=None):
    adapter = Killer(kill_after)
    smoothed = SmoothedClassifier(adapter, 0.3, batch_size=16, device="cpu", seed=3,
                                  journal=journal)
    result = smoothed.certify(torch.full((1, 12, 12), 0.7), n0=16, n=80, alpha=0.01)
    return result, sum(map(len, adapter.requests))
