"""The natural-photo study end to end at the tiny scale (pip-shipped photos only)."""

from __future__ import annotations

import json

import pytest
import torch

from smoothapi._precision import resolve_dtype
from smoothapi.analysis import read_log
from smoothapi.runs import read_log_rows
from smoothapi.studies.natural_photos import PHOTO_SCALES, PhotoStudy, run_photo_study

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos")
    run_photo_study("tiny", out, device="cpu")
    return out


def test_split_is_disjoint_by_photo(study):
    manifest = json.loads((study / "manifest.json").read_text())
    train = {p["name"] for p in manifest["photos"] if p["split"] == "train"}
    test = {p["name"] for p in manifest["photos"] if p["split"] == "test"}
    assert train and test and not train & test
    assert {c["photo"] for c in manifest["test_crops"]} <= test
    assert (manifest["crop_size"], manifest["test_crop_size"]) == (48, 64)
    assert all(len(p["sha256"]) == 64 and p["licence"] for p in manifest["photos"])


def test_every_configuration_is_certified_and_reported(study):
    scale = PHOTO_SCALES["tiny"]
    methods = [
        "none",
        "mse",
        "stab+mse-query",
        "stab+mse-full",
        "whitebox",
        "api-none",
        "api-stab+mse-query",
        "photo-mse",  # the shipped noise-level-aware denoiser, at every sigma
        "api-photo-mse",  # and at the API budget, at the headline sigma only
    ]
    for method in methods:
        log = read_log(study / "logs" / f"{method}@0.25.tsv", method)
        assert len(log) == scale.certify_images
    summary = json.loads((study / "summary.json").read_text())
    assert set(summary["methods"]) == set(methods)
    # The other sigma certifies every extras_every-th crop, keeping the crops' indices.
    for method in ("none", "stab+mse-query", "stab+mse-full", "whitebox", "mse", "photo-mse"):
        rows = read_log_rows(study / "logs" / f"{method}@0.5.tsv")
        assert [int(row["idx"]) for row in rows] == list(range(0, scale.certify_images,
                                                               scale.extras_every))
    assert summary["images_per_sigma"] == {"0.25": 3, "0.5": 2}
    assert "0.5" in summary["methods"]["mse"] and "0.5" not in summary["methods"]["api-none"]
    assert "0.5" not in summary["methods"]["api-photo-mse"]
    assert "0.12" in summary["methods"]["none"]["0.25"]["certified_accuracy"]
    report = (study / "README.md").read_text()
    assert "fine-tuned under Gaussian noise" in report and "api-none" in report
    assert "3 test images at sigma 0.25, 2 at 0.5" in report and "every 1th" not in report
    assert "best sigma per radius, on the 2 test images certified at every sigma" in report
    assert f"Denoisers run in {resolve_dtype('auto')} when certifying" in report  # this CPU's
    recorded = json.loads((study / "stages" / "certify:photo-mse_at_0.25.json").read_text())
    assert recorded["denoiser_dtype"] == resolve_dtype("auto")
    assert '`load_denoiser("photo-mse")`' in report and "- photo-mse (over none)" in report
    assert (study / "denoising_examples_sigma0.25.png").stat().st_size > 0
    assert (study / "curves_sigma0.25.png").stat().st_size > 0


def test_query_access_rows_go_through_the_loopback_vision_api(study):
    from smoothapi.journal import Journal

    for method, adapter in (("api-none", "clarifai"), ("stab+mse-query", "clarifai"),
                            ("photo-mse", "clarifai"), ("api-photo-mse", "clarifai"),
                            ("stab+mse-full", "local"),
                            ("whitebox", "local")):
        with Journal(study / "journals" / f"{method}@0.25.sqlite") as journal:
            [config] = journal.runs().values()
        assert config["adapter"]["adapter"] == adapter, method


def test_the_test_photos_whole_are_certified_with_the_apis_clean_answer_beside(study):
    from smoothapi.analysis import read_log_rows
    from smoothapi.studies.photo_certify import WHOLE_METHODS, whole_log_path

    scale = PHOTO_SCALES["tiny"]
    [side] = scale.whole_sides
    photos = json.loads((study / "manifest.json").read_text())
    tested = [p for p in photos["photos"] if p["split"] == "test"]
    for method in WHOLE_METHODS:
        rows = read_log_rows(whole_log_path(study, method, 0.25, side))
        assert len(rows) == len(tested)
        # The label is the local target's clean top-1; the API, asked once on the clean
        # photo, gives the same answer (it serves that model, PNG is lossless).
        assert all(row["clean"] == row["label"] for row in rows)
        assert all(row["differs"] == str(int(row["predict"] != row["clean"])) for row in rows)
    report = (study / "README.md").read_text()
    section = report[report.index("## Test photos whole"):]
    assert f"| {tested[0]['name']} | {side} | " in section
    assert "| 48 | all (" in section and "| photo-mse |" in section


def test_the_white_box_is_distilled_on_crops_of_its_own_size(study):
    from safetensors import safe_open

    path = study / "classifiers" / "whitebox@0.25" / "weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["smoothapi"])
    assert meta["recipe"] == "distillation under noise"
    assert meta["crop"] == PHOTO_SCALES["tiny"].whitebox_crop == 64
    # Batch-norm layers only: every convolution is the published target's, the norms moved.
    from safetensors.torch import load_file

    from smoothapi.zoo import build_classifier

    assert meta["trained"] == "batchnorm"
    tuned, published = load_file(str(path)), build_classifier("efficientnet_lite2").state_dict()
    convs = [k for k in published if k.endswith("weight") and published[k].dim() == 4]
    assert convs and all(torch.equal(tuned[k], published[k]) for k in convs)
    assert not torch.equal(tuned["_bn0.running_var"], published["_bn0.running_var"])


def test_denoisers_record_how_they_were_trained(study):
    from smoothapi.denoisers import load_denoiser

    query = load_denoiser(study / "denoisers" / "stab+mse-query@0.25" / "denoiser.safetensors")
    meta = query.checkpoint_metadata
    assert meta["surrogates"] == ["lite0", "lite1"] and meta["objective"] == "stab+mse"
    assert meta["kwargs"]["in_channels"] == 3
    full = load_denoiser(study / "denoisers" / "stab+mse-full@0.25" / "denoiser.safetensors")
    assert full.checkpoint_metadata["surrogates"] == ["target"]


def test_rerun_skips_finished_stages_and_says_it_only_rewrote_the_report(study, capsys):
    markers = {p.name: p.read_text() for p in (study / "stages").iterdir()}
    logs = {p.name: p.read_bytes() for p in (study / "logs").iterdir()}
    capsys.readouterr()
    run_photo_study("tiny", study, device="cpu")
    assert {p.name: p.read_text() for p in (study / "stages").iterdir()} == markers
    assert {p.name: p.read_bytes() for p in (study / "logs").iterdir()} == logs
    said = capsys.readouterr().out
    assert "only the report was rewritten" in said and "new --out" in said


def test_fresh_refuses_a_folder_with_finished_stages_before_loading_anything(study, monkeypatch):
    from smoothapi.errors import InvalidInputError
    from smoothapi.studies import natural_photos

    def never(*args, **kwargs):
        raise AssertionError("the study was loaded")

    monkeypatch.setattr(natural_photos, "PhotoStudy", never)
    with pytest.raises(InvalidInputError, match="new --out"):
        run_photo_study("tiny", study, device="cpu", fresh=True)


def test_the_report_says_how_to_reproduce_and_how_long_it_took(study):
    report = (study / "README.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("To reproduce from scratch"))
    assert "smoothapi experiment natural-photos --scale tiny --out NEW_FOLDER --fresh" in line
    assert " h of wall time" in line


def test_photos_that_differ_from_the_manifest_are_refused(study, tmp_path):
    import shutil

    from smoothapi.errors import InvalidInputError

    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((study / "manifest.json").read_text())
    manifest["photos"][0]["sha256"] = "0" * 64  # as if another version of the file
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match=manifest["photos"][0]["name"]):
        PhotoStudy(PHOTO_SCALES["tiny"], copy, "cpu")
    shutil.copy(study / "manifest.json", copy / "manifest.json")
    PhotoStudy(PHOTO_SCALES["tiny"], copy, "cpu")  # the same files: accepted


def test_levers_are_trained_diagnosed_and_the_best_certified_through_the_api(study):
    from smoothapi.denoisers import load_denoiser
    from smoothapi.journal import Journal
    from smoothapi.studies.photo_levers import chosen_lever

    scale = PHOTO_SCALES["tiny"]
    found = {}
    for method in ("none", "mse", "stab+mse-query", "stab+mse-full", "whitebox",
                   *(lever.method for lever in scale.levers)):
        found[method] = json.loads((study / "diagnostics" / f"{method}@0.25.json").read_text())
        d = found[method]
        assert d["crops"] == scale.certify_images and d["draws"] == scale.diagnose_draws
        assert 0 <= d["keep_all"] <= d["keep_90"] <= 1 and 0 <= d["keep"] <= 1
    # No denoiser: the PSNR of the noise itself, -10 log10(sigma^2) = 12.04 dB at 0.25
    # (3 crops x 4 draws x 12,288 values: the estimate is within 0.05 dB of it).
    assert found["none"]["psnr"] == pytest.approx(12.04, abs=0.05)
    assert found["mse"]["psnr"] != found["none"]["psnr"]
    for lever in scale.levers:
        meta = load_denoiser(study / "denoisers" / f"{lever.method}@0.25" /
                             "denoiser.safetensors").checkpoint_metadata
        assert (meta["lever"], meta["start"]) == (lever.change, lever.start)
        assert meta["surrogates"] == ["lite0", "lite1"]  # query access only
    report = (study / "README.md").read_text()
    assert "Diagnostic at sigma 0.25" in report and "| stab+mse-query-rr |" in report

    class Probe:  # the choice reads the diagnostics the stages wrote
        out, scale = study, PHOTO_SCALES["tiny"]

    best = chosen_lever(Probe(), 0.25)
    certified = {p.stem for p in (study / "logs").glob("*.tsv")}
    levers = {lever.method for lever in scale.levers}
    if best is None:
        assert not {f"{m}@0.25" for m in levers} & certified
        assert "none is certified" in report
    else:
        assert found[best]["keep_90"] > found["stab+mse-query"]["keep_90"]
        assert certified & {f"{m}@0.25" for m in levers} == {f"{best}@0.25"}
        with Journal(study / "journals" / f"{best}@0.25.sqlite") as journal:
            [config] = journal.runs().values()
        assert config["adapter"]["adapter"] == "clarifai"


def test_only_runs_the_stages_named(tmp_path):
    run_photo_study("tiny", tmp_path, device="cpu", only=("diagnose:none",))
    assert [p.name for p in (tmp_path / "stages").iterdir()] == ["diagnose:none_at_0.25.json"]
    assert (tmp_path / "diagnostics" / "none@0.25.json").exists()
    assert not (tmp_path / "denoisers").exists() and not (tmp_path / "logs").exists()


def test_the_more_photos_lever_draws_from_every_training_photo(tmp_path, monkeypatch):
    """The small study keeps the 25 photos it started with; a lever with photos="all"
    trains on every training photo found, here one generated file in a lomiri slot."""
    import numpy as np
    from PIL import Image

    from smoothapi import photos
    from smoothapi.errors import InvalidInputError
    from smoothapi.studies.natural_photos import FIRST_TRAIN_PHOTOS, PhotoStudy

    small = PHOTO_SCALES["small"]
    assert small.train_photos == FIRST_TRAIN_PHOTOS and len(FIRST_TRAIN_PHOTOS) == 25
    assert not any(name.startswith("lomiri-") for name in FIRST_TRAIN_PHOTOS)
    [lever] = [lv for lv in small.levers if lv.photos == "all"]
    assert (lever.start, lever.epochs) == ("mse", small.stab_epochs)  # the query recipe
    kleiber = next(p for p in photos.PHOTOS if p.name == "lomiri-kleiber")
    assert kleiber.split == "train" and kleiber.licence.startswith("CC-BY-SA-3.0")
    root = tmp_path / "root"
    (root / kleiber.file).parent.mkdir(parents=True)
    Image.fromarray(np.full((80, 120, 3), 200, np.uint8)).save(root / kleiber.file)
    monkeypatch.setattr(photos, "_debian_roots", lambda: [root])
    assert [p.name for p in photos.available_photos("train")] == ["lomiri-kleiber"]
    study = PhotoStudy(PHOTO_SCALES["tiny"], tmp_path / "out", "cpu")
    ours = study.train_set(None, 6)
    assert ours is study.train  # the study's own crops (of astronaut and rocket)
    more = study.train_set(None, 6, "all")
    assert len(more) == 6 and all(np.all(more[k][0].numpy() == more[0][0].numpy())
                                  for k in range(6))  # fmt: skip
    assert abs(float(more[0][0].mean()) - 200 / 255) < 0.01  # only the generated photo
    with pytest.raises(InvalidInputError, match="photos must be"):
        study.train_set(None, 6, "some")
    monkeypatch.setattr(photos, "_debian_roots", lambda: [])
    with pytest.raises(InvalidInputError, match="make photos"):
        PhotoStudy(small, tmp_path / "small", "cpu")  # its named photos are missing


def test_stage_order_puts_the_api_budget_before_mse_and_the_lever_last(study, monkeypatch):
    """On a rerun every stage is done; the order they are visited in is the order a fresh
    run takes: the lever's certification after every sigma's rows (it is the optional one)."""
    from smoothapi.studies.natural_photos import PhotoStudy
    from smoothapi.studies.photo_levers import chosen_lever

    visited, stage = [], PhotoStudy.stage
    monkeypatch.setattr(PhotoStudy, "stage",
                        lambda self, name, work, **kw: (visited.append(name),
                                                        stage(self, name, work, **kw)))
    run_photo_study("tiny", study, device="cpu")
    certify = [name for name in visited if name.startswith("certify:")]
    assert certify.index("certify:api-none@0.25") < certify.index("certify:mse@0.25")
    assert certify.index("certify:api-stab+mse-query@0.25") < certify.index("certify:mse@0.25")
    budget = certify.index("certify:api-photo-mse@0.25")  # the shipped denoiser's rows last
    assert certify.index("certify:photo-mse@0.25") < budget
    assert budget < certify.index("certify:photo-mse@0.5")

    class Probe:
        out, scale = study, PHOTO_SCALES["tiny"]

    best = chosen_lever(Probe(), 0.25)
    if best is not None:
        assert certify[-1] == f"certify:{best}@0.25" and certify.count(certify[-1]) == 1
    assert certify[-2 if best else -1].endswith("@0.5")


def test_report_gives_the_gain_over_no_denoiser_with_an_interval(study):
    """Where the white box does not beat no denoiser, the gain is what stands."""
    summary = json.loads((study / "summary.json").read_text())
    gains = summary["gain_over_none"]["0.25"]
    for method in ("api-stab+mse-query", "api-photo-mse"):
        assert gains[method]["0.25"]["over"] == "api-none"  # the same budget
    for method in ("stab+mse-query", "stab+mse-full", "whitebox", "mse"):
        log, none = (read_log(study / "logs" / f"{m}@0.25.tsv", m) for m in (method, "none"))
        assert list(gains[method]) == ["0.25"]  # n = 24 certifies up to 0.30: no r = 0.5
        for r in (0.25,):
            got = gains[method][f"{r:g}"]
            by_hand = ((log.correct & (log.radius >= r)).mean()
                       - (none.correct & (none.radius >= r)).mean())  # fmt: skip
            assert got["over"] == "none" and got["gain"] == pytest.approx(by_hand)
            assert got["ci95"][0] <= got["gain"] <= got["ci95"][1]
    assert "gained over no denoiser at sigma 0.25" in (study / "README.md").read_text()


def test_gains_and_gaps_are_reported_only_at_radii_the_row_can_certify():
    """n = 500 certifies up to 0.27 at sigma 0.12 and the API budget (n = 100) up to 0.38
    at 0.25: a gain at r = 0.5 there would be 0 for every row, so it is not reported."""
    from smoothapi.studies.study import _compared_radii

    class Probe:
        scale = PHOTO_SCALES["small"]
        sample_counts = PhotoStudy.sample_counts

    study = Probe()
    assert _compared_radii(study, "stab+mse-query", 0.25) == (0.25, 0.5)
    assert _compared_radii(study, "stab+mse-query", 0.12) == (0.12, 0.25)
    assert _compared_radii(study, "mse", 0.5) == (0.25, 0.5)
    assert _compared_radii(study, "api-stab+mse-query", 0.25) == (0.25,)


def test_the_report_names_the_precision_each_denoiser_was_certified_in(tmp_path):
    """Markers written before the precision was recorded ran in bfloat16; rows without a
    denoiser do not count; a minority in another precision is named row by row."""
    from smoothapi.studies.natural_photos import precision_note

    def marker(stage, **record):
        name = stage.replace("@", "_at_") + ".json"
        (tmp_path / name).write_text(json.dumps({"stage": stage, "seconds": 1.0, **record}))

    marker("certify:none@0.25")
    marker("certify:mse@0.25")  # before the record: bfloat16
    marker("certify-whole:photo-mse@0.25:224px", denoiser_dtype="bfloat16")
    assert precision_note(tmp_path).startswith("Denoisers run in bfloat16 when certifying")
    marker("certify:api-photo-mse@0.25", denoiser_dtype="float32")
    marker("certify:api-none@0.25")
    note = precision_note(tmp_path)
    assert "run in bfloat16" in note and "except float32 for certify:api-photo-mse@0.25" in note
    assert "api-none" not in note and "certify:none" not in note
    assert precision_note(tmp_path / "nothing").startswith("Denoisers run in float32")


def test_a_fresh_checkout_neither_retrains_the_white_box_nor_loses_its_time(study, tmp_path,
                                                                            capsys):  # fmt: skip
    """The white-box weights and their stage markers are not committed (.gitignore): a
    clone of a finished study must only rewrite the report, still timing those stages."""
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(study, clone)
    shutil.rmtree(clone / "classifiers")
    for marker in (clone / "stages").glob("classifier:*"):
        marker.unlink()
    record = json.loads((clone / "stages" / "certify:whitebox_at_0.25.json").read_text())
    trained = record["needed_seconds"]["classifier:whitebox@0.25"]
    capsys.readouterr()
    run_photo_study("tiny", clone, device="cpu")
    assert "only the report was rewritten" in capsys.readouterr().out
    assert not (clone / "classifiers").exists()
    report = (clone / "README.md").read_text()
    assert f"- classifier:whitebox@0.25: {trained:.0f}" in report
    assert "- diagnose:whitebox@0.25: " in report
    assert "- denoiser:stab+mse-full@0.25: " in report  # committed markers are timed as ever
