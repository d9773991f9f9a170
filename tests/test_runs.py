"""Datasets: the one loop (budgets, errors, sharding, progress), the log format, shard merging."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
import torch

from smoothapi import Adapter, RateLimits, SmoothedClassifier
from smoothapi.adapters.http import HTTPAdapter
from smoothapi.analysis import read_log
from smoothapi.errors import (
    BadRequestError,
    BudgetExceededError,
    InvalidInputError,
    RateLimitError,
)
from smoothapi.runs import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    LogWriter,
    Shard,
    certify_many,
    predict_many,
    read_log_rows,
    write_log,
)
from smoothapi.testing import LoopbackProvider

from .adapters.fake import FakeAdapter
from .test_dispatch import FAST, Faulty

IMAGES = [torch.full((1, 12, 12), v) for v in (0.9, 0.1, 0.8)]


def test_certify_many_streams_outcomes_goes_on_after_errors_and_stops_at_the_budget(
    monkeypatch,
):
    adapter = Faulty()
    smoothed = SmoothedClassifier(adapter, 0.2, batch_size=8, device="cpu", seed=0, retry=FAST)
    outcomes = list(smoothed.certify_many(IMAGES, n0=8, n=16, alpha=0.05))
    assert [o.certification.label for o in outcomes] == ["bright", "dark", "bright"]
    assert [o.queries for o in outcomes] == [24, 24, 24] and all(o.error is None for o in outcomes)

    failing = Faulty(storm=10**6, error=BadRequestError)
    smoothed = SmoothedClassifier(failing, 0.2, device="cpu", seed=0, retry=FAST)
    outcomes = list(smoothed.certify_many(IMAGES, n0=4, n=4))
    assert len(outcomes) == 3 and all(isinstance(o.error, BadRequestError) for o in outcomes)

    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    seen = []
    with pytest.raises(BudgetExceededError, match="stopped before image 2"):
        for outcome in smoothed.certify_many(IMAGES, n0=8, n=16, max_queries=60):
            seen.append(outcome.index)
    assert seen == [0, 1]

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    assert [o.index for o in smoothed.certify_many(IMAGES, n0=4, n=4)] == [1]
    assert [o.index for o in certify_many(smoothed, IMAGES, 4, 4, shard=False)] == [0, 1, 2]


def test_cost_cap_target_radius_and_progress(capsys):
    smoothed = SmoothedClassifier(Faulty(), 0.2, device="cpu", seed=0, retry=FAST)
    done = []
    with pytest.raises(BudgetExceededError):
        for outcome in smoothed.certify_many(IMAGES, n0=8, n=16, max_cost=0.05,
                                             price_per_1000=1.0, progress=True):  # fmt: skip
            done.append(outcome)
    assert [o.cost for o in done] == [pytest.approx(0.024), pytest.approx(0.024)]
    assert "plan: 3 image(s) x 24 queries" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="largest radius"):
        list(smoothed.certify_many(IMAGES, n0=8, n=16, target_radius=1.0))
    with pytest.raises(InvalidInputError, match="max_cost needs price_per_1000"):
        list(smoothed.certify_many(IMAGES, n0=8, n=16, max_cost=1.0))


def test_the_loop_gives_what_single_calls_give():
    # The runner draws each image's noise as certify / predict would: same seed, same results.
    def classifier():
        return SmoothedClassifier(FakeAdapter(), 0.5, batch_size=8, device="cpu", seed=4)

    one = classifier()
    singles = [one.certify(x, n0=8, n=24, alpha=0.05) for x in IMAGES]
    assert [o.result for o in certify_many(classifier(), IMAGES, 8, 24, 0.05)] == singles
    one = classifier()
    singles = [one.predict(x, n=24, alpha=0.05) for x in IMAGES]
    assert [o.result for o in predict_many(classifier(), IMAGES, 24, 0.05)] == singles


def test_shards_split_a_dataset_without_overlap():
    shards = [Shard(rank, 3) for rank in range(3)]
    taken = [[i for i, _ in shard.select(range(10))] for shard in shards]
    assert sorted(sum(taken, [])) == list(range(10))
    assert [shard.size(10) for shard in shards] == [len(t) for t in taken] == [4, 3, 3]
    assert [i for i, _ in shards[1].select(iter(range(10)))] == taken[1]  # a plain iterator
    assert Shard().output("log.tsv") == "log.tsv" and shards[2].output("log.tsv") == "log.tsv.rank2"
    assert Shard.from_env() == Shard(0, 1)


@pytest.mark.parametrize("fmt", ["tsv", "json"])
def test_log_rows_round_trip_and_analysis_reads_them(tmp_path, fmt):
    smoothed = SmoothedClassifier(FakeAdapter(), 0.2, batch_size=8, device="cpu", seed=0)
    path = tmp_path / f"log.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as out:
        written = write_log(certify_many(smoothed, IMAGES, 8, 16, 0.05), LogWriter(out, fmt),
                            labels=["bright", "bright", "bright"], files=["a", "b", "c"],
                            sigma=0.2)  # fmt: skip
    assert written == 3
    rows = read_log_rows(path)
    assert [str(row["idx"]) for row in rows] == ["0", "1", "2"]
    assert [str(row["correct"]) for row in rows] == ["1", "0", "1"]
    assert [row["file"] for row in rows] == ["a", "b", "c"]
    if fmt == "json":
        assert rows[0]["counts"] == {"bright": 16} and rows[0]["sigma"] == 0.2
    else:
        assert list(rows[0]) == list(CERTIFY_COLUMNS)
    log = read_log(path)
    assert log.correct.tolist() == [True, False, True] and (log.radius[[0, 2]] > 0).all()


def test_predict_rows_report_sigma_and_abstain_as_null_in_json():
    smoothed = SmoothedClassifier(FakeAdapter(), 0.2, batch_size=8, device="cpu", seed=0)
    out = io.StringIO()
    write_log(predict_many(smoothed, IMAGES[:1], 2, 0.001), LogWriter(out, "json", PREDICT_COLUMNS),
              sigma=0.2)  # fmt: skip
    row = json.loads(out.getvalue())
    assert row["predict"] is None and row["sigma"] == 0.2 and "radius" not in row


def test_a_failed_image_stops_the_log_with_its_error():
    failing = Faulty(storm=10**6, error=BadRequestError)
    smoothed = SmoothedClassifier(failing, 0.2, device="cpu", seed=0, retry=FAST)
    out = io.StringIO()
    with pytest.raises(BadRequestError):
        write_log(certify_many(smoothed, IMAGES, 4, 4), LogWriter(out))
    assert out.getvalue().splitlines() == ["\t".join(CERTIFY_COLUMNS)]  # the header alone
    with pytest.raises(InvalidInputError, match="log format"):
        LogWriter(out, "csv")


class _Broken(Adapter):
    """A local adapter with a bug: dark images raise a plain RuntimeError."""

    name = "broken"

    def top_labels(self, images):
        if images.mean() < 0.5:
            raise RuntimeError("shape mismatch in the model")
        return ["bright"] * len(images)

    def ranked_labels(self, image):
        return [("bright", 1.0)]


def test_any_exception_is_kept_for_its_image_and_the_run_goes_on():
    """Before: only ProviderError was caught, so any other failure ended the whole run."""
    smoothed = SmoothedClassifier(_Broken(), 0.2, device="cpu", seed=0, retry=FAST)
    outcomes = list(certify_many(smoothed, IMAGES, 4, 8, 0.05, shard=False))
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert isinstance(outcomes[1].error, RuntimeError) and outcomes[1].result is None
    assert outcomes[0].error is None and outcomes[2].error is None


def _brightness(images):
    means = images.flatten(1).mean(1).tolist()
    return [[("bright", m), ("dark", 1 - m)] for m in means]


def test_a_run_stops_when_the_provider_asks_to_wait_longer_than_max_wait():
    # A real server's 429 with Retry-After: 86400 made the run sleep for a day. Now it stops
    # with the time to resume, and does not go on to the next images (each would wait too).
    with LoopbackProvider(_brightness, rate_limit=3, retry_after=86_400) as api:
        adapter = HTTPAdapter(api.url("generic"))
        smoothed = SmoothedClassifier(adapter, 0.25, batch_size=4, device="cpu", seed=0,
                                      limits=RateLimits(requests_per_second=50, max_in_flight=1))

        async def run():
            async with smoothed:
                return [o async for o in smoothed.acertify_many(IMAGES, 4, 8, 0.05)]

        started = time.monotonic()
        with pytest.raises(RateLimitError, match="resume after") as caught:
            asyncio.run(asyncio.wait_for(run(), 30))
        assert time.monotonic() - started < 15
        assert caught.value.retry_after == 86_400
        assert api.stats.rate_limited == 1  # one refusal, then nothing more was sent


def test_progress_moves_with_each_batch_of_answers_not_each_image(capsys, monkeypatch):
    from smoothapi import runs

    updates, totals = [], []

    class Spy(runs.tqdm):
        def update(self, n=1):
            updates.append(n)
            totals.append(self.total)
            return super().update(n)

    monkeypatch.setattr(runs, "tqdm", Spy)
    smoothed = SmoothedClassifier(FakeAdapter(), 0.2, None, batch_size=4, device="cpu", seed=0)
    outcomes = list(certify_many(smoothed, IMAGES, 8, 16, 0.05, progress=True))
    assert len(outcomes) == len(IMAGES)
    assert sum(updates) == len(IMAGES) * 24 and len(updates) >= len(IMAGES) * 24 // 4
    assert totals[0] == len(IMAGES) * 24  # answers the run may take: the bar's ETA
    err = capsys.readouterr().err
    assert "answer" in err and "qps=" in err and f"{len(IMAGES) * 24}/{len(IMAGES) * 24}" in err
    assert smoothed.answer_listeners == []
