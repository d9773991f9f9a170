"""``smoothapi certify / predict --api NAME`` end to end against a loopback vision API.

The loopback server speaks every provider's wire format: the generic HTTP adapter's
and Azure's (v3.2 through the SDK, 4.0 through aiohttp) over REST, AWS Rekognition's
JSON 1.1 through boto3, and Google's and Clarifai's services over plaintext gRPC
through their own clients; each runs end to end.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothapi.certification import max_certifiable_radius
from smoothapi.cli import api as api_cli
from smoothapi.cli import main
from smoothapi.pricing import PRICES
from smoothapi.testing import LoopbackProvider

from ..loopback import brightness

SRC = Path(__file__).resolve().parents[2] / "src"
SIGMA = 0.25



@pytest.fixture(scope="module")
def api():
    with LoopbackProvider(brightness) as server:
        yield server


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """ImageFolder layout, grey and RGB images, true labels from the folder names."""
    root = tmp_path_factory.mktemp("images")
    for label, value, mode in (("bright", 230, "L"), ("bright", 210, "RGB"), ("dark", 20, "RGB")):
        folder = root / label
        folder.mkdir(exist_ok=True)
        shape = (16, 16) if mode == "L" else (16, 16, 3)
        name = f"{value}.png"
        Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(folder / name)
    return root


@pytest.fixture(autouse=True)
def no_real_credentials(monkeypatch, tmp_path):
    """Fake or no credentials only; no cloud metadata server is ever asked."""
    for name in ("AZURE_VISION_ENDPOINT", "AZURE_VISION_KEY", "VISION_ENDPOINT", "VISION_KEY",
                 "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "CLARIFAI_PAT",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(tsv: str) -> list[dict[str, str]]:
    header, *lines = tsv.splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]


def _without_time(tsv: str) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in _rows(tsv)]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("smoothapi: error: "), err
    return lines[-1]


COUNTS = ("--n0", "8", "--n", "40", "--seed", "0")


# --- http: the whole path ---------------------------------------------------------------------


def test_http_certify_writes_the_tsv_after_the_plan(capsys, api, images):
    before = api.stats.images
    code, out, err = _run(capsys, "certify", "--api", "http", "--url", api.url("generic"), images,
                          "--sigma", SIGMA, *COUNTS, "--denoiser", "none", "--yes")
    assert code == 0, err
    best = max_certifiable_radius(40, 0.001, SIGMA)
    assert out.splitlines()[0] == ("idx\tlabel\tpredict\tradius\tcorrect\ttime\tfile\tclean"
                                   "\tdiffers")
    rows = _rows(out)
    assert [r["file"] for r in rows] == ["bright/210.png", "bright/230.png", "dark/20.png"]
    assert [r["predict"] for r in rows] == [r["label"] for r in rows]
    assert all(float(r["radius"]) == pytest.approx(best) and r["correct"] == "1" for r in rows)
    assert [(r["clean"], r["differs"]) for r in rows] == [("bright", "0"), ("bright", "0"),
                                                           ("dark", "0")]
    # n0 + n noisy queries, and one on the clean image: the API's own answer
    assert "plan: 3 image(s) x at most 49 queries = at most 147 queries to http" in err
    assert f"largest certifiable radius with n=40, alpha=0.001, sigma=0.25: {best:.3f}" in err
    assert "cost unknown: no price for http" in err and "denoiser: none (--denoiser none)" in err
    assert api.stats.images - before == 147


def test_default_denoiser_is_the_shipped_photo_one_and_grey_images_become_rgb(
    capsys, monkeypatch, api, images, tiny_denoiser
):
    monkeypatch.setattr(api_cli, "default_denoiser", lambda sigma: str(tiny_denoiser))
    code, out, err = _run(capsys, "predict", "--api", "http", "--url", api.url("generic"), images,
                          "--sigma", SIGMA, "--n", "30", "--seed", "0", "--yes")
    assert code == 0, err
    assert f"denoiser: {tiny_denoiser}" in err
    assert out.splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime\tfile\tclean\tdiffers"
    assert len(_rows(out)) == 3


def test_no_shipped_denoiser_for_sigma_says_so(capsys, monkeypatch, api, images):
    monkeypatch.setattr(api_cli, "default_denoiser", lambda sigma: None)
    code, _, err = _run(capsys, "predict", "--api", "http", "--url", api.url("generic"), images,
                        "--sigma", 0.3, "--n", "10", "--seed", "0", "--yes")
    assert code == 0
    assert "denoiser: none (no shipped photo denoiser for sigma=0.3" in err


def test_radius_mode_adds_the_outcome_column_and_stops_early(capsys, api, images):
    before = api.stats.images
    code, out, err = _run(capsys, "certify", "--api", "http", "--url", api.url("generic"), images,
                          "--sigma", SIGMA, "--n0", "5", "--n", "400", "--seed", "0",
                          "--radius", "0.2", "--selection", "clean", "--denoiser", "none",
                          "--yes")
    assert code == 0, err
    assert out.splitlines()[0] == ("idx\tlabel\tpredict\tradius\toutcome\tcorrect\ttime\tfile"
                                   "\tclean\tdiffers")
    rows = _rows(out)
    assert [r["outcome"] for r in rows] == ["certified"] * 3
    assert all(float(r["radius"]) == 0.2 for r in rows)
    # Unanimous answers decide R >= 0.2 long before the budget of 400 (1 clean query each).
    assert api.stats.images - before < 3 * 200
    assert "at most 402 queries" in err


def test_radius_beyond_reach_is_refused_before_any_query(capsys, api, images):
    before = api.stats.requests
    code, _, err = _run(capsys, "certify", "--api", "http", "--url", api.url("generic"), images,
                        "--sigma", SIGMA, "--n", "20", "--radius", "0.5", "--denoiser", "none")
    assert code == 2
    assert "can never be certified with n=20" in _one_error_line(err)
    assert api.stats.requests == before


def test_record_then_replay_gives_the_same_rows_with_nothing_sent(capsys, api, images, tmp_path):
    tape = tmp_path / "tape.jsonl"
    common = ["certify", "--api", "http", images, "--sigma", SIGMA, *COUNTS, "--denoiser", "none",
              "--format", "json", "--yes"]
    code, recorded, _ = _run(capsys, *common, "--url", api.url("generic"), "--record", tape)
    assert code == 0 and tape.stat().st_size > 0
    before = api.stats.requests
    code, replayed, err = _run(capsys, *common, "--url", api.url("generic"), "--replay", tape,
                               "--price", "1")
    assert code == 0, err
    assert "nothing is sent: every answer is replayed" in err
    assert api.stats.requests == before

    def strip(text):
        return [line.split('"time"')[0] for line in text.splitlines()]

    assert strip(replayed) == strip(recorded)


# --- money first: the plan and the refusal -------------------------------------------------


@pytest.mark.parametrize("api_version", ["v3.2", "4.0"])
def test_azure_plan_refusal_and_run_under_the_cap(capsys, monkeypatch, api, images, api_version):
    monkeypatch.setenv("AZURE_VISION_KEY", "fake-key-for-loopback")
    common = ["certify", "--api", "azure", "--endpoint", api.url(""), "--api-version",
              api_version, images, "--sigma", SIGMA, "--n0", "4", "--n", "20", "--seed", "0",
              "--rate", "500", "--denoiser", "none"]  # fmt: skip
    before = api.stats.requests
    code, out, err = _run(capsys, *common)
    assert code == api_cli.EXIT_NOT_RUN and out == ""
    price = PRICES["azure"]
    assert f"estimated cost $0.07 at ${price.per_1000:.2f} per 1,000 images" in err
    assert price.source in err and price.checked in err
    assert "not run: add --yes" in err
    code, out, err = _run(capsys, *common, "--max-cost", "0.05")
    assert code == api_cli.EXIT_NOT_RUN and "above --max-cost $0.05" in err
    assert api.stats.requests == before  # nothing was sent
    code, out, err = _run(capsys, *common, "--max-cost", "0.10")
    assert code == 0, err
    assert [r["predict"] for r in _rows(out)] == ["bright", "bright", "dark"]
    assert api.stats.requests - before == 75
    assert "sent 75 queries to azure, about $0.07" in err


def test_yes_runs_and_max_cost_below_the_estimate_stops_at_the_cap(capsys, monkeypatch, api,
                                                                   images):
    monkeypatch.setenv("AZURE_VISION_KEY", "fake")
    code, out, err = _run(capsys, "certify", "--api", "azure", "--endpoint", api.url(""),
                          "--api-version", "4.0", images, "--sigma", SIGMA, "--n0", "4",
                          "--n", "20", "--seed", "0", "--rate", "500", "--denoiser", "none",
                          "--yes", "--max-cost", "0.05")
    # $0.05 buys 50 queries: two images of 25, then the run stops before the third.
    assert code == 2
    assert len(_rows(out)) == 2
    assert "stopped before image 2" in _one_error_line(err)


@pytest.mark.parametrize(
    "provider, env, flags",
    [
        ("google", {"GOOGLE_API_KEY": "fake"}, []),
        ("clarifai", {"CLARIFAI_PAT": "fake"}, ["--model-id", "general-image-recognition"]),
        ("aws", {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake"},
         ["--region", "us-east-1"]),
    ],
)
def test_other_providers_plan_and_refuse_without_sending(capsys, monkeypatch, images, provider,
                                                         env, flags):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = _run(capsys, "certify", "--api", provider, *flags, images, "--sigma", SIGMA,
                          "--n0", "20", "--n", "500", "--max-cost", "1", "--denoiser", "none")
    assert code == api_cli.EXIT_NOT_RUN and out == ""
    cost = 3 * 521 * PRICES[provider].per_1000 / 1000
    assert f"estimated cost ${cost:,.2f} at" in err and PRICES[provider].checked in err
    assert "above --max-cost $1" in err


@pytest.mark.parametrize("provider", ["google", "clarifai", "aws"])
def test_grpc_and_aws_providers_certify_end_to_end_through_their_sdks(capsys, monkeypatch, api,
                                                                      images, provider):
    """The vendor's own client against the loopback server in the vendor's wire format."""
    env, flags = {
        "google": ({"GOOGLE_API_KEY": "fake-key"}, ["--endpoint", api.target(), "--insecure"]),
        "clarifai": ({"CLARIFAI_PAT": "fake-pat"}, ["--endpoint", api.target(), "--insecure"]),
        "aws": ({"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret"},
                ["--region", "us-east-1", "--endpoint", api.url("aws")]),
    }[provider]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = api.stats.images
    code, out, err = _run(capsys, "certify", "--api", provider, *flags, images, "--sigma", SIGMA,
                          "--n0", "4", "--n", "20", "--seed", "0", "--rate", "500",
                          "--denoiser", "none", "--yes")
    assert code == 0, err
    assert [r["predict"] for r in _rows(out)] == ["bright", "bright", "dark"]
    assert api.stats.images - before == 3 * 25
    assert f"sent 75 queries to {provider}" in err
    assert "fake-key" not in err + out and "fake-secret" not in err + out


# --- the journal: a killed run resumes -----------------------------------------------------


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "smoothapi", *map(str, argv)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_run_resumes_from_its_journal(capsys, tmp_path, images, how):
    with LoopbackProvider(brightness, latency=0.02) as slow:
        common = ["certify", "--api", "http", "--url", slow.url("generic"), images, "--sigma",
                  SIGMA, "--n0", "10", "--n", "60", "--seed", "3", "--denoiser", "none",
                  "--yes", "--journal", tmp_path / "j.sqlite"]  # fmt: skip
        process = subprocess.Popen(_cli(*common), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=_env())  # fmt: skip
        assert process.stdout.readline().startswith("idx\t")
        assert process.stdout.readline().startswith("0\t")  # one image done
        process.send_signal(how)
        _, err = process.communicate(timeout=60)
        killed_sent = slow.stats.images
        if how == signal.SIGINT:
            assert process.returncode == 130 and "Traceback" not in err
            assert "--journal" in err and "--seed 3" in err and "interrupted" in err
            assert err.count("interrupted") == 1, err  # one line says it all
        with sqlite3.connect(tmp_path / "j.sqlite") as db:
            journaled = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        assert 71 <= journaled < 3 * 71  # the clean answer is journaled too
        code, resumed, err = _run(capsys, *common)
        assert code == 0, err
        resumed_sent = slow.stats.images - killed_sent
    assert resumed_sent == 3 * 71 - journaled  # nothing journaled was sent again
    with LoopbackProvider(brightness) as fresh:
        code, reference, _ = _run(capsys, *common[:4], fresh.url("generic"), *common[5:-2])
    assert _without_time(resumed) == _without_time(reference)


# --- bad input: one line, a non-zero exit, nothing sent --------------------------------------


def test_unknown_provider(capsys, images):
    code, _, err = _run(capsys, "certify", "--api", "watson", images, "--sigma", SIGMA)
    assert code == 2
    assert _one_error_line(err) == ("smoothapi: error: unknown API 'watson'; known: azure, "
                                    "google, aws, clarifai, http")  # fmt: skip


@pytest.mark.parametrize(
    "provider, flags, fragment",
    [
        ("azure", [], "no Azure AI Vision credentials"),
        ("google", [], "no Google credentials: set GOOGLE_API_KEY"),
        ("clarifai", [], "set CLARIFAI_PAT"),
        ("aws", ["--region", "us-east-1"], "no AWS credentials"),
    ],
)
def test_missing_credentials(capsys, images, provider, flags, fragment):
    code, out, err = _run(capsys, "certify", "--api", provider, *flags, images, "--sigma", SIGMA)
    assert code == 2 and out == ""
    assert fragment in _one_error_line(err)


def test_aws_without_region(capsys, monkeypatch, images):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    code, _, err = _run(capsys, "certify", "--api", "aws", images, "--sigma", SIGMA)
    assert code == 2 and "no AWS region" in _one_error_line(err)


@pytest.mark.parametrize("provider, module", [("aws", "boto3"), ("google", "google.cloud.vision"),
                                              ("clarifai", "clarifai_grpc.grpc.api.service_pb2")])
def test_missing_sdk_extra(capsys, monkeypatch, images, provider, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    code, _, err = _run(capsys, "certify", "--api", provider, images, "--sigma", SIGMA)
    assert code == 2
    line = _one_error_line(err)
    assert f"pip install 'smoothapi-certified[{provider}]'" in line


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--api", "http"], "--api http needs --url"),
        (["--api", "azure", "--region", "eu"], "--region applies to aws, not azure"),
        (["--api", "http", "--url", "http://127.0.0.1:9", "--header", "oops"],
         "expected --header 'NAME: VALUE'"),
        (["--api", "http", "--url", "http://127.0.0.1:9", "--max-cost", "1"],
         "--max-cost needs a price for http"),
        (["--api", "http", "--url", "http://127.0.0.1:9", "--header-env", "X-Key=NOT_SET_HERE"],
         "NOT_SET_HERE"),
        (["--model", "m.safetensors", "--api", "http"], "not both"),
        ([], "give --model CKPT (a local classifier) or --api NAME"),
    ],
)
def test_bad_options(capsys, images, argv, fragment):
    code, _, err = _run(capsys, "certify", images, "--sigma", SIGMA, *argv)
    assert code == 2
    assert fragment in _one_error_line(err)


def test_header_values_never_reach_the_output(capsys, monkeypatch, api, images):
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-value")
    code, out, err = _run(capsys, "predict", "--api", "http", "--url", api.url("generic"), images,
                          "--sigma", SIGMA, "--n", "5", "--denoiser", "none",
                          "--header-env", "Authorization=MY_SECRET_TOKEN", "--yes")
    assert code == 0
    assert "s3cr3t" not in out + err


def test_console_entry_point_one_line_without_traceback(images, tmp_path):
    env = {k: v for k, v in _env().items() if not k.startswith(("AWS_", "AZURE_", "VISION_"))}
    done = subprocess.run(_cli("certify", "--api", "azure", images, "--sigma", SIGMA),
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no Azure AI Vision credentials" in done.stderr


def test_api_options_with_a_local_model_are_refused(capsys, images):
    code, _, err = _run(capsys, "certify", "--model", "m.safetensors", images, "--sigma", SIGMA,
                        "--max-cost", "1")
    assert code == 2 and "--max-cost only apply with --api NAME" in _one_error_line(err)


def test_plan_is_printed_before_anything_is_sent_even_on_a_dead_endpoint(capsys, images):
    """The plan needs no connection: a closed port fails only after the plan was shown."""
    started = time.perf_counter()
    code, _, err = _run(capsys, "certify", "--api", "http", "--url", "http://127.0.0.1:9/x",
                        images, "--sigma", SIGMA, "--n0", "2", "--n", "5", "--denoiser", "none",
                        "--yes")
    assert code == 2
    assert err.index("plan: 3 image(s)") < err.index("smoothapi: error:")
    assert time.perf_counter() - started < 60


def test_radius_mode_with_a_local_model_too(capsys, tmp_path):
    from smoothapi import LocalModelAdapter
    from smoothapi.training import create_classifier

    torch.manual_seed(1)
    model = create_classifier("small_cnn", in_channels=1, num_classes=2, width=4)
    with torch.no_grad():  # answers "a" whatever the input
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([10.0, 0.0]))
    LocalModelAdapter(model, class_names=["a", "b"]).save(tmp_path / "m.safetensors")
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(tmp_path / "x.png")
    code, out, err = _run(capsys, "certify", "--model", tmp_path / "m.safetensors",
                          tmp_path / "x.png", "--sigma", SIGMA, "--n0", "5", "--n", "500",
                          "--radius", "0.3", "--seed", "0", "--device", "cpu")
    assert code == 0, err
    (row,) = _rows(out)
    assert row["outcome"] == "certified" and float(row["radius"]) == 0.3 and row["predict"] == "a"


# --- issue 26, item 7: the messages a newcomer trips on ----------------------------------------

HTTP = ("--api", "http", "--labels-path", "labels")


def _http(api) -> list[str]:
    return ["--api", "http", "--url", api.url("generic")]


def test_aws_region_is_read_from_AWS_REGION_too(capsys, monkeypatch, api, images):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    seen = {}
    real = api_cli.create_adapter

    def spy(name, **options):
        seen.update(options)
        return real(name, **options)

    monkeypatch.setattr(api_cli, "create_adapter", spy)
    code, out, err = _run(capsys, "certify", "--api", "aws", "--endpoint", api.url("aws"), images,
                          "--sigma", SIGMA, "--n0", "4", "--n", "20", "--seed", "0", "--rate",
                          "500", "--denoiser", "none", "--yes")
    assert code == 0, err
    assert "no AWS region" not in err and seen["region_name"] == "us-east-1"
    assert [r["predict"] for r in _rows(out)] == ["bright", "bright", "dark"]


def test_every_unreadable_image_is_named_and_the_others_are_certified(capsys, api, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), "white").save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png at all")
    Image.new("RGB", (8, 8), "black").save(folder / "c.png")
    (folder / "d.png").write_bytes(b"")
    code, out, err = _run(capsys, "certify", *_http(api), folder, "--sigma", SIGMA, *COUNTS,
                          "--denoiser", "none", "--yes")
    assert code == 1, err
    assert "b.png" in err and "d.png" in err and "Traceback" not in err
    assert "2 image(s) could not be read" in err
    rows = _rows(out)
    assert [(r["idx"], r["file"]) for r in rows] == [("0", "a.png"), ("2", "c.png")]
    assert "plan: 2 image(s)" in err


def test_a_resumed_run_quotes_only_what_is_left(capsys, api, images, tmp_path):
    journal = tmp_path / "j.sqlite"
    common = [*_http(api), "--sigma", SIGMA, "--n0", "4", "--n", "20", "--seed", "0",
              "--denoiser", "none", "--journal", journal, "--price", "1"]
    code, _, err = _run(capsys, "certify", images / "dark" / "20.png", *common, "--yes")
    assert code == 0, err
    code, out, err = _run(capsys, "certify", images, *common)
    assert code == api_cli.EXIT_NOT_RUN and out == ""
    assert "25 already answered" in err and "at most 50 left to send" in err
    assert "estimated cost $0.05 at $1 per 1,000" in err  # 50 queries, not 75
    assert "$0.07" not in err


def test_replay_says_replayed_not_sent_and_a_miss_says_record(capsys, api, images, tmp_path):
    tape = tmp_path / "tape.jsonl"
    common = ["certify", *_http(api), images, "--sigma", SIGMA, "--n0", "4", "--n", "20",
              "--denoiser", "none", "--yes"]
    code, _, err = _run(capsys, *common, "--seed", "0", "--record", tape)
    assert code == 0, err
    code, _, err = _run(capsys, *common, "--seed", "0", "--replay", tape)
    assert code == 0, err
    assert f"replayed 75 answers from {tape}; none sent to http" in err
    assert "sent 75" not in err
    code, _, err = _run(capsys, *common, "--seed", "1", "--replay", tape)
    assert code == 2
    line = _one_error_line(err)
    assert "--record FILE" in line and "mode=" not in line


def test_the_plan_is_printed_once(capsys, api, images):
    code, _, err = _run(capsys, "certify", *_http(api), images, "--sigma", SIGMA, *COUNTS,
                        "--denoiser", "none", "--yes", "--progress")
    assert code == 0, err
    assert err.count("plan") == 1, err


def test_an_unknown_price_stops_unless_yes_max_queries_or_price(capsys, api, images):
    common = ["certify", *_http(api), images, "--sigma", SIGMA, *COUNTS, "--denoiser", "none"]
    before = api.stats.requests
    code, out, err = _run(capsys, *common)
    assert code == api_cli.EXIT_NOT_RUN and out == ""
    assert "not run: the cost is unknown" in err and "--price" in err and "--yes" in err
    assert api.stats.requests == before
    for extra in (["--yes"], ["--max-queries", "1000"], ["--price", "0"]):
        code, out, err = _run(capsys, *common, *extra)
        assert code == 0, (extra, err)
        assert len(_rows(out)) == 3


def test_insecure_help_names_google_and_clarifai(capsys):
    main(["certify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--insecure google")
    assert "google" in text[start:start + 120] and "clarifai" in text[start:start + 120]


def test_json_abstention_is_null_and_tsv_keeps_minus_one(capsys, api, images):
    common = ["certify", *_http(api), images, "--sigma", SIGMA, "--n0", "4", "--n", "5",
              "--seed", "0", "--denoiser", "none", "--yes"]
    code, out, err = _run(capsys, *common, "--format", "json")
    assert code == 0, err
    import json

    records = [json.loads(line) for line in out.splitlines()]
    assert [r["predict"] for r in records] == [None, None, None]  # n=5 cannot certify
    code, out, _ = _run(capsys, *common)
    assert [r["predict"] for r in _rows(out)] == ["-1", "-1", "-1"]


def test_query_and_query_env_for_http(capsys, monkeypatch, api, images):
    monkeypatch.setenv("MY_QUERY_KEY", "q-s3cr3t-77")
    seen = {}
    real = api_cli.create_adapter

    def spy(name, **options):
        adapter = real(name, **options)
        seen["adapter"] = adapter
        return adapter

    monkeypatch.setattr(api_cli, "create_adapter", spy)
    code, out, err = _run(capsys, "predict", *_http(api), images, "--sigma", SIGMA, "--n", "5",
                          "--denoiser", "none", "--yes", "--query", "version=2",
                          "--query-env", "key=MY_QUERY_KEY")
    assert code == 0, err
    adapter = seen["adapter"]
    assert adapter.query == {"version": "2"} and adapter._secret_query == {"key": "q-s3cr3t-77"}
    assert "q-s3cr3t" not in out + err
    code, _, err = _run(capsys, "predict", *_http(api), images, "--sigma", SIGMA,
                        "--query", "key=visible")
    assert code == 2 and "query_env" in _one_error_line(err)
    code, _, err = _run(capsys, "predict", "--api", "azure", images, "--sigma", SIGMA,
                        "--query", "a=b")
    assert code == 2 and "--query and --query-env apply to http" in _one_error_line(err)


# --- issue 26, item 4: the API's own answer on the clean image ------------------------------


def test_the_clean_answer_is_a_column_and_rows_that_differ_are_marked(capsys, api, images):
    common = ["certify", *_http(api), images, "--sigma", SIGMA, "--n0", "4", "--seed", "0",
              "--denoiser", "none", "--yes"]
    # n=5 cannot certify: each certificate abstains, so it differs from the clean answer.
    code, out, err = _run(capsys, *common, "--n", "5")
    assert code == 0, err
    rows = _rows(out)
    assert [(r["predict"], r["clean"], r["differs"]) for r in rows] == [
        ("-1", "bright", "1"), ("-1", "bright", "1"), ("-1", "dark", "1")]
    code, out, err = _run(capsys, *common, "--n", "40", "--format", "text")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == ["idx", "label", "predict", "radius", "correct", "time", "file",
                              "clean", "differs"]
    best = max_certifiable_radius(40, 0.001, SIGMA)
    assert all(f" {best:.3f} " in line and "*" not in line for line in lines), out
    code, out, _ = _run(capsys, *common, "--n", "5", "--format", "text")
    assert all("abstain" in line and line.rstrip().endswith("*") for line in out.splitlines()[1:])
    code, out, _ = _run(capsys, *common, "--n", "40", "--format", "json")
    import json

    records = [json.loads(line) for line in out.splitlines()]
    assert [r["clean"] for r in records] == ["bright", "bright", "dark"]
    assert records[0]["radius"] == best  # full precision


# --- issue 26, item 2: photos of ordinary size -------------------------------------------------


def test_the_batch_is_sized_to_free_memory_unless_given(capsys, monkeypatch, api, tmp_path,
                                                        tiny_denoiser):
    import smoothapi._images as images_module

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((128, 128, 3), 200, dtype=np.uint8)).save(photo)
    # 20 MiB free: a batch of 8 noisy 128x128 samples through a denoiser needs about 69 MB.
    monkeypatch.setattr(images_module, "available_memory", lambda device: 20 * 2**20)
    common = ["certify", *_http(api), photo, "--sigma", SIGMA, "--n0", "2", "--n", "8",
              "--seed", "0", "--denoiser", str(tiny_denoiser), "--yes", "--device", "cpu"]
    code, out, err = _run(capsys, *common)
    assert code == 0, err
    assert "batch size 1, fit to the free memory of cpu" in err and "--batch-size 1" in err
    assert len(_rows(out)) == 1
    code, _, err = _run(capsys, *common, "--batch-size", "8")  # an explicit one still wins
    assert code == 2 and "needs about" in _one_error_line(err)


def test_max_side_resizes_before_the_noise_and_says_what_the_radius_means(capsys, api, tmp_path):
    photo = tmp_path / "wide.png"
    Image.fromarray(np.full((40, 64, 3), 200, dtype=np.uint8)).save(photo)
    code, out, err = _run(capsys, "certify", *_http(api), photo, "--sigma", SIGMA, *COUNTS,
                          "--denoiser", "none", "--yes", "--max-side", "16")
    assert code == 0, err
    assert err.count("at most 16 px a side") == 2  # in the plan, and after the rows
    assert "resized image's pixel space" in err
    assert err.index("at most 16 px a side") < err.index("seed 0")
    assert len(_rows(out)) == 1
    from smoothapi._images import fit_side

    assert fit_side(torch.rand(3, 40, 64), 16).shape == (3, 10, 16)
    assert fit_side(torch.rand(3, 10, 12), 16).shape == (3, 10, 12)
    code, _, err = _run(capsys, "certify", *_http(api), photo, "--sigma", SIGMA, "--max-side", 0)
    assert code == 2 and "max-side" in _one_error_line(err)


def test_a_local_model_sizes_its_batch_to_free_memory_and_takes_max_side(capsys, monkeypatch,
                                                                         tmp_path):
    import smoothapi._images as images_module
    from smoothapi import LocalModelAdapter
    from smoothapi.training import create_classifier

    torch.manual_seed(1)
    model = create_classifier("small_cnn", in_channels=1, num_classes=2, width=4)
    LocalModelAdapter(model, class_names=["a", "b"]).save(tmp_path / "m.safetensors")
    Image.fromarray(np.full((96, 64), 90, dtype=np.uint8)).save(tmp_path / "x.png")
    # 96x64 grey: about 3.2 MB a sample; 8 MiB free fits a batch of 1 in half of it.
    monkeypatch.setattr(images_module, "available_memory", lambda device: 8 * 2**20)
    common = ["certify", "--model", tmp_path / "m.safetensors", tmp_path / "x.png", "--sigma",
              SIGMA, "--n0", "4", "--n", "8", "--seed", "0", "--device", "cpu"]
    code, out, err = _run(capsys, *common)
    assert code == 0, err
    assert "batch size 1, fit to the free memory" in err and len(_rows(out)) == 1
    code, _, err = _run(capsys, *common, "--batch-size", "8")
    assert code == 2 and "needs about" in _one_error_line(err)
    code, out, err = _run(capsys, *common, "--max-side", "24")
    assert code == 0, err
    assert "batch size 16, fit" in err and "at most 24 px a side" in err  # 24x16: 16 fit


def test_the_plan_estimates_the_time_from_a_short_warm_up(capsys, monkeypatch, api, images,
                                                          tiny_denoiser):
    code, _, err = _run(capsys, "certify", *_http(api), images, "--sigma", SIGMA, *COUNTS,
                        "--denoiser", str(tiny_denoiser), "--price", "1")
    assert code == api_cli.EXIT_NOT_RUN  # nothing sent: the estimate comes before any query
    (line,) = [line for line in err.splitlines() if "time: about" in line]
    assert "ms a sample here (measured on 2 warm-up batches" in line
    assert err.index("time: about") < err.index("not run")
    monkeypatch.setenv("AZURE_VISION_KEY", "fake")
    code, _, err = _run(capsys, "certify", "--api", "azure", "--endpoint", api.url(""), images,
                        "--sigma", SIGMA, *COUNTS, "--denoiser", "none", "--rate", "2")
    assert code == api_cli.EXIT_NOT_RUN
    assert "time: about 74 s (2 requests/s)" in err  # 147 queries, one image a request


def test_the_denoiser_line_warns_only_outside_what_the_denoiser_was_trained_for():
    cpu = torch.device("cpu")
    model, line = api_cli.choose_denoiser(None, 0.3, cpu)  # no per-sigma one for 0.3
    assert line == "denoiser: photo-mse" and model is not None
    _, line = api_cli.choose_denoiser("photo-mse", 0.12, cpu)
    assert line == "denoiser: photo-mse"  # noise-level aware: 0.12 is in its range
    _, line = api_cli.choose_denoiser("photo-mse", 0.7, cpu)
    assert line.endswith("trained for sigma in [0, 0.5], not 0.7")
    _, line = api_cli.choose_denoiser("photo-sigma0.25", 0.3, cpu)
    assert line.endswith("it was trained for sigma=0.25, not 0.3")
