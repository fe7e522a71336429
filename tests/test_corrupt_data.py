"""Corrupt data and hostile paths on copies of the real fixtures in ../shared/data.

Every check is an error naming the annotation file and the record (one line); with
``--skipBadSamples 1`` the bad samples are skipped, listed in ``<run>/bad_samples.txt`` and
counted in log.txt, and too many of them still stop the run in one line. A DataLoader worker
that dies or hangs names the sample it was loading. The fixtures are copied into tmp_path
before anything is changed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import main as entry
from conftest import REPO_ROOT, TINY_RUN, copy_fixture, edit_h5, edit_json, run_cli
from datasets.base import DataError, read_image
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.loading import GuardedDataLoader, loader_failure
from datasets.mpii import MPIIDataset
from datasets.synthetic import SyntheticPeople
from datasets.validation import BadDataPolicy

INPUT, HEATMAP = (48, 64), (12, 16)
CODEC = HeatmapCodec(INPUT, HEATMAP, 1.0)
SKIP = BadDataPolicy(skip=True, max_fraction=0.5)
# (annotation file, record 0's label in messages, its image) per reader
READERS = {
    "mpii-h5": ("valid_first5.h5", "record 0 (image 005808361.jpg)", "005808361.jpg"),
    "mpii-json": ("test_mpii.json", "record 0 (image 005808361.jpg)", "005808361.jpg"),
    "coco": ("test_coco.json", "annotation 442619 (image 000000000785.jpg)", "000000000785.jpg"),
}
# record 1 of each reader: the one the record corruptions change
SECOND = {
    "mpii-h5": ("record 1", "052475643.jpg"),
    "mpii-json": ("record 1", "052475643.jpg"),
    "coco": ("annotation 198196", "000000040083.jpg"),
}


@pytest.fixture
def data_dir(request, shared_data, tmp_path) -> Path:
    """A copy of the fixture folder the parametrized reader reads."""
    folder = "coco_mini" if request.param == "coco" else "mpii_mini"
    return copy_fixture(shared_data / folder, tmp_path / "data")


def build(reader: str, folder: Path, annotation: str | None = None, **kwargs):
    annotation = annotation or READERS[reader][0]
    if reader == "coco":
        return COCODataset(folder, "val2017", CODEC, INPUT, annotation_file=annotation, **kwargs)
    return MPIIDataset(folder, "valid", CODEC, INPUT, annotation_file=annotation, **kwargs)


def one_line_error(call, *parts: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---------------------------------------------------------------------------------------------
# Bad images: found when the sample is loaded
# ---------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def text(path: Path) -> None:
    path.write_text("this is not a picture\n")


IMAGE_CORRUPTIONS = {
    "truncated": (truncate, "truncated JPEG (5000 bytes, no end-of-image marker FF D9"),
    "zero-byte": (empty, "empty file (0 bytes)"),
    "text": (text, "starts with text"),
}


@pytest.mark.parametrize("data_dir,reader", [(r, r) for r in READERS], indirect=["data_dir"])
@pytest.mark.parametrize("corruption", IMAGE_CORRUPTIONS)
def test_bad_image_names_file_and_record(data_dir, reader, corruption):
    annotation, label, image = READERS[reader]
    damage, problem = IMAGE_CORRUPTIONS[corruption]
    damage(data_dir / image)
    dataset = build(reader, data_dir)  # the records are fine: the image is read with the sample
    one_line_error(
        lambda: dataset[0], f"{data_dir / annotation}: {label}: ", str(data_dir / image), problem,
        "--skipBadSamples 1",
    )  # fmt: skip
    dataset[1]  # the other samples load


def test_truncated_jpeg_is_caught_before_decoding(coco_copy):
    # OpenCV may decode the top of a cut-off JPEG and fill the rest with grey, without an error
    path = coco_copy / "000000000785.jpg"
    truncate(path)
    one_line_error(lambda: read_image(path), "truncated JPEG")
    # a complete JPEG followed by other data (a phone's motion photo, padding) is still read
    whole = (REPO_ROOT.parent / "shared" / "data" / "coco_mini" / "000000000785.jpg").read_bytes()
    path.write_bytes(whole + b"trailing video data")
    assert read_image(path).shape == (425, 640, 3)


# ---------------------------------------------------------------------------------------------
# Bad records: found when the annotation file is read, all at once
# ---------------------------------------------------------------------------------------------


def mpii_json_record(key, value):
    """Set ``key`` of MPII JSON record 1 (``value(outside)`` when callable)."""
    return lambda items, outside: items[1].__setitem__(key, value(outside) if callable(value) else value)


def set_h5(key, index, value):
    def change(fields, outside):
        fields[key][index] = value(outside) if callable(value) else value

    return change


def coco_annotation(key, value, ann_id=198196):
    """Change ``key`` of a COCO annotation (``value(old)`` when callable)."""

    def change(data, outside=None):
        ann = next(a for a in data["annotations"] if a["id"] == ann_id)
        ann[key] = value(ann[key]) if callable(value) else value

    return change


def coco_image(key, value):
    """Set ``key`` of COCO image 1 (40083; ``value(outside)`` when callable)."""
    return lambda data, outside=None: data["images"][1].__setitem__(
        key, value(outside) if callable(value) else value
    )


def with_item(values, position, value):
    values = list(values)
    values[position] = value
    return values


NAN = float("nan")
# reader -> {case: (change(data, outside), words the message must hold)}; ``outside`` is an
# absolute image path
RECORD_CORRUPTIONS = {
    "mpii-json": {
        "nan-joint": (lambda d, o: d[1]["joints"][3].__setitem__(0, NAN), "annotated joint 3 is (nan"),
        "escaping-path": (
            mpii_json_record("image", "../x.jpg"),
            "image path '../x.jpg' leaves the image folder",
        ),
        "absolute-path": (mpii_json_record("image", str), "is absolute, outside the image folder"),
        "negative-scale": (mpii_json_record("scale", -2.0), "scale -2.0 is not a finite number > 0"),
        "visibility": (lambda d, o: d[1]["joints_vis"].__setitem__(0, 7), "joints_vis 0 is 7, not 0, 1 or 2"),
        "joint-count": (
            lambda d, o: d[1].__setitem__("joints", d[1]["joints"][:15]),
            "has 30 values, expected 32",
        ),
        "not-an-object": (lambda d, o: d.__setitem__(1, [1, 2]), "not an object"),
    },
    "mpii-h5": {
        "nan-joint": (set_h5("part", (1, 3, 0), NAN), "annotated joint 3 is (nan"),
        "escaping-path": (set_h5("imgname", 1, b"../x.jpg"), "image path '../x.jpg' leaves the image folder"),
        "absolute-path": (
            set_h5("imgname", 1, lambda o: str(o).encode()),
            "is absolute, outside the image folder",
        ),
        "negative-scale": (set_h5("scale", 1, -1.5), "scale -1.5 is not a finite number > 0"),
        "inf-center": (set_h5("center", (1, 0), np.inf), "center (inf"),
    },
    "coco": {
        "nan-joint": (
            coco_annotation("keypoints", lambda k: with_item(k, 0, NAN)),
            "keypoints value 0 is nan",
        ),
        "escaping-path": (
            coco_image("file_name", "../x.jpg"),
            "image path '../x.jpg' leaves the image folder",
        ),
        "absolute-path": (coco_image("file_name", str), "is absolute, outside the image folder"),
        "visibility": (
            coco_annotation("keypoints", lambda k: with_item(k, 2, 3)),
            "visibility 0 is 3, not 0",
        ),
        "far-outside": (
            coco_annotation("keypoints", lambda k: with_item(k, 0, 1e5)),
            "far outside the 500x333",
        ),
        "zero-width": (coco_annotation("bbox", lambda b: with_item(b, 2, 0)), "has width or height <= 0"),
        "negative-area": (coco_annotation("area", -4.0), "area -4 is negative"),
        "keypoint-count": (coco_annotation("keypoints", lambda k: k[:-3]), "has 48 values, expected 51"),
        "image-size": (coco_image("width", -640), "is not two whole numbers >= 1"),
    },
}
CASES = [(reader, case) for reader, cases in RECORD_CORRUPTIONS.items() for case in cases]


def corrupt_record(reader: str, case: str, folder: Path, outside: Path) -> str:
    """Apply ``case`` to record 1 of the reader's annotation file; the words to expect."""
    change, words = RECORD_CORRUPTIONS[reader][case]
    path = folder / READERS[reader][0]
    (edit_h5 if path.suffix == ".h5" else edit_json)(path, lambda data: change(data, outside))
    return words


@pytest.mark.parametrize("data_dir,reader,case", [(r, r, c) for r, c in CASES], indirect=["data_dir"])
def test_bad_record_names_file_and_record(data_dir, reader, case, tmp_path):
    outside = tmp_path / "elsewhere" / SECOND[reader][1]
    words = corrupt_record(reader, case, data_dir, outside)
    annotation = data_dir / READERS[reader][0]
    label = SECOND[reader][0]
    message = one_line_error(
        lambda: build(reader, data_dir), f"{annotation}: {label}", words, "--skipBadSamples 1"
    )
    if case == "absolute-path":
        assert str(outside) in message
    # skipping drops that record alone and lists it
    dataset = build(reader, data_dir, policy=SKIP)
    assert len(dataset.dropped) == (2 if reader == "coco" and "path" in case or case == "image-size" else 1)
    assert dataset.dropped[0].startswith(f"{annotation}: {label}") and words in dataset.dropped[0]
    dataset[0]


@pytest.mark.parametrize("data_dir,reader", [(r, r) for r in READERS], indirect=["data_dir"])
@pytest.mark.parametrize("case", ["escaping-path", "absolute-path"])
def test_allow_outside_paths_reads_them(data_dir, reader, case, tmp_path):
    outside = tmp_path / "elsewhere" / SECOND[reader][1]
    corrupt_record(reader, case, data_dir, outside)
    original = data_dir / SECOND[reader][1]
    target = outside if case == "absolute-path" else data_dir.parent / "x.jpg"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(original, target)
    dataset = build(reader, data_dir, policy=BadDataPolicy(allow_outside_paths=True))
    index = next(i for i, r in enumerate(dataset.records) if Path(r["path"]).resolve() == target.resolve())
    assert dataset[index]["image"].shape == (3, INPUT[1], INPUT[0])


def test_joint_far_outside_its_image_is_found_with_the_image(mpii_copy):
    # MPII files do not give image sizes: the check runs once the image is decoded
    edit_json(mpii_copy / "test_mpii.json", lambda d: d[1]["joints"].__setitem__(3, [40000.0, 100.0]))
    dataset = build("mpii-json", mpii_copy)
    one_line_error(
        lambda: dataset[1], "test_mpii.json: record 1 (image 052475643.jpg)", "joint 3 at (39999, 99)"
    )


# ---------------------------------------------------------------------------------------------
# Skipping: the next good sample, counted, and a limit
# ---------------------------------------------------------------------------------------------


def test_bad_image_is_replaced_by_the_next_good_sample(coco_copy):
    truncate(coco_copy / "000000000785.jpg")  # record 0
    empty(coco_copy / "000000040083.jpg")  # records 1 and 2
    dataset = build("coco", coco_copy, policy=SKIP)
    assert [dataset[i]["meta"]["index"] for i in (0, 1, 2, 3)] == [3, 3, 3, 3]
    assert dataset.bad_indices() == [0, 1, 2]
    assert sorted(dataset[0]) == ["image", "meta", "target", "target_weight"]
    # the limit counts every bad sample found so far, the replacements' included
    strict = build("coco", coco_copy, policy=BadDataPolicy(skip=True, max_fraction=0.2))
    one_line_error(
        lambda: strict[0], "too many bad samples: stopped early, at 3 bad of the 12 records",
        "0 dropped when the file was read, 3 with a bad image among those loaded so far; the rest were not checked",
        "more than --maxBadFraction 0.2 allows (2 of 12; --maxBadFraction 0.25 allows 3)",
    )  # fmt: skip


def test_too_many_bad_records_stop_when_the_file_is_read(coco_copy):
    edit_json(coco_copy / "test_coco.json", coco_image("file_name", "../x.jpg"))
    one_line_error(
        lambda: build("coco", coco_copy, policy=BadDataPolicy(skip=True, max_fraction=0.1)),
        "too many bad samples: 2 of 12 records", "leaves the image folder",
    )  # fmt: skip


def test_mpii_pred_mat_keeps_the_file_rows_when_records_are_dropped(mpii_copy, tmp_path):
    from metrics.mpii import load_pred_mat

    edit_json(mpii_copy / "test_mpii.json", lambda items: items[1].__setitem__("scale", -1.0))
    dataset = build("mpii-json", mpii_copy, policy=SKIP)
    assert [r["image_id"] for r in dataset.records] == [0, 2, 3, 4]
    preds = np.stack([r["joints"] for r in dataset.records]).astype(np.float64)
    dataset.evaluate({"preds": preds, "image_id": np.array([0, 2, 3, 4])}, tmp_path)
    written = load_pred_mat(tmp_path / "pred.mat")
    assert written.shape == (5, 16, 2)  # row i is person i of the file (and of gt_valid.mat)
    np.testing.assert_allclose(written[[0, 2, 3, 4]], preds, atol=1e-6)


def test_resumed_run_keeps_the_bad_samples_found_before(coco_copy, tmp_path):
    from datasets.loading import BadSampleReport

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bad_samples.txt").write_text("x.json: annotation 7 (image a.jpg): found before\n")
    truncate(coco_copy / "000000000785.jpg")
    dataset = build("coco", coco_copy, policy=SKIP)
    report = BadSampleReport(tmp_path / "run", [dataset])
    dataset[0]
    report.update(dataset, end_of_pass=True)
    lines = (tmp_path / "run" / "bad_samples.txt").read_text().splitlines()
    assert len(lines) == 2 and "truncated JPEG" in lines[0] and lines[1].endswith("found before")


# ---------------------------------------------------------------------------------------------
# Whole runs through main.py
# ---------------------------------------------------------------------------------------------


def coco_run_args(folder: Path, exp: Path, *extra: str) -> list[str]:
    return [
        *TINY_RUN, "-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--dataDir", str(folder),
        "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json", "--imageDir", ".",
        "--expDir", str(exp), "--nEpochs", "1", "--tensorboard", "0", *extra,
    ]  # fmt: skip


def spoil_coco(folder: Path) -> None:
    """4 of the 12 usable persons bad: a truncated image (1 person), a NaN keypoint (1), an image
    path leaving the folder (2)."""
    truncate(folder / "000000000785.jpg")
    edit_json(folder / "test_coco.json", coco_annotation("keypoints", lambda k: with_item(k, 0, NAN), 460541))
    edit_json(folder / "test_coco.json", coco_image("file_name", "../000000040083.jpg"))


@pytest.mark.e2e
def test_skip_bad_samples_run_completes_and_lists_them(coco_copy, tmp_path):
    spoil_coco(coco_copy)
    args = coco_run_args(coco_copy, tmp_path / "exp", "--skipBadSamples", "1", "--maxBadFraction", "0.5")
    # a DataLoader worker finds the bad image: its flag reaches the main process
    assert entry.main([*args, "--nThreads", "1", "--expID", "skip"]) == 0
    run = tmp_path / "exp" / "skip"
    lines = (run / "bad_samples.txt").read_text().splitlines()
    annotation = coco_copy / "test_coco.json"
    assert len(lines) == 4 and all(line.startswith(f"{annotation}: annotation ") for line in lines)
    expected = {
        "442619": "truncated JPEG",
        "460541": "keypoints value 0 is nan",
        "198196": "'../000000040083.jpg' leaves the image folder",
        "230195": "'../000000040083.jpg' leaves the image folder",
    }
    for ann_id, problem in expected.items():
        assert any(f"annotation {ann_id} " in line and problem in line for line in lines), (ann_id, lines)
    log = (run / "log.txt").read_text()
    assert (
        "bad samples: 4 skipped (3 records dropped when the annotations were read, 1 with a bad image" in log
    )


@pytest.mark.e2e
def test_bad_data_stops_the_run_in_one_line(coco_copy, tmp_path, monkeypatch, capsys):
    spoil_coco(coco_copy)
    annotation = coco_copy / "test_coco.json"
    # without --skipBadSamples: the first bad record, named, before anything trains
    status, lines = run_cli(
        monkeypatch, capsys, coco_run_args(coco_copy, tmp_path / "exp", "--expID", "plain")
    )
    assert status == 2 and len(lines) == 1, lines
    assert (
        lines[0].startswith(f"main.py: error: {annotation}: annotation ") and "2 more bad records" in lines[0]
    )
    # skipping, but more than --maxBadFraction of the data is bad
    args = coco_run_args(coco_copy, tmp_path / "exp", "--skipBadSamples", "1", "--expID", "limit")
    status, lines = run_cli(monkeypatch, capsys, args)
    assert status == 2 and len(lines) == 1, lines
    assert "too many bad samples: 3 of 12 records" in lines[0] and "--maxBadFraction 0.01" in lines[0]


@pytest.mark.e2e
def test_too_many_bad_images_stop_a_running_epoch_in_one_line(coco_copy, tmp_path, monkeypatch, capsys):
    truncate(coco_copy / "000000000785.jpg")
    text(coco_copy / "000000040083.jpg")
    args = coco_run_args(coco_copy, tmp_path / "exp", "--skipBadSamples", "1", "--maxBadFraction", "0.1")
    status, lines = run_cli(monkeypatch, capsys, [*args, "--nThreads", "1", "--expID", "images"])
    assert status == 2 and len(lines) == 1, lines
    assert "main.py: error: too many bad samples: stopped early, at 2 bad of the 12 records" in lines[0]
    assert "the rest were not checked), more than --maxBadFraction 0.1 allows (1 of 12;" in lines[0]
    assert "--maxBadFraction 0.17 allows 2)" in lines[0]
    assert str(coco_copy / "test_coco.json") in lines[0]


@pytest.mark.e2e
def test_mpii_skip_run_lists_bad_images_and_paths(mpii_copy, tmp_path):
    empty(mpii_copy / "052475643.jpg")  # record 1 of both files
    outside = str(tmp_path / "004645041.jpg")
    edit_json(mpii_copy / "test_mpii.json", lambda items: items[3].__setitem__("image", outside))
    args = [
        *TINY_RUN, "-DataConfig", str(REPO_ROOT / "conf/datasets/mpii.defconf"), "--dataDir", str(mpii_copy),
        "--trainAnnotation", "test_mpii.json", "--valAnnotation", "valid_first5.h5", "--expDir", str(tmp_path / "exp"),
        "--nEpochs", "1", "--tensorboard", "0", "--skipBadSamples", "1", "--maxBadFraction", "0.5", "--expID", "m",
    ]  # fmt: skip
    assert entry.main(args) == 0
    lines = (tmp_path / "exp" / "m" / "bad_samples.txt").read_text().splitlines()
    train, val = mpii_copy / "test_mpii.json", mpii_copy / "valid_first5.h5"
    assert len(lines) == 3, lines
    assert (
        lines[0].startswith(f"{train}: record 3 (image {outside}): image path") and "is absolute" in lines[0]
    )
    assert any(line.startswith(f"{train}: record 1 (image 052475643.jpg): ") for line in lines)
    assert any(line.startswith(f"{val}: record 1 (image 052475643.jpg): ") for line in lines)
    assert all("empty file (0 bytes)" in line for line in lines[1:])


# ---------------------------------------------------------------------------------------------
# A DataLoader worker that dies or hangs names its sample
# ---------------------------------------------------------------------------------------------


class FailingPeople(SyntheticPeople):
    """Synthetic people whose sample 5 kills its worker (``mode`` "kill") or hangs ("hang")."""

    mode = "kill"

    def load_image(self, record):
        if record["image_id"] == 5:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        return super().load_image(record)


@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_dead_or_stuck_worker_names_its_sample(mode):
    dataset = FailingPeople("train", 8, HeatmapCodec((32, 32), (8, 8), 1.0), (32, 32), image_size=48)
    dataset.mode = mode
    loader = GuardedDataLoader(dataset, batch_size=1, num_workers=1, timeout=2)
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "\n" not in message and "worker 0 was loading sample 5, FailingPeople: record 5" in message
    assert ("timed out after 2 seconds" in message) == (mode == "hang")


def test_loader_failure_outside_the_loop_is_named_too():
    # PyTorch may raise a dead worker's error from its SIGCHLD handler during a training step
    dataset = SyntheticPeople("val", 4, HeatmapCodec((32, 32), (8, 8), 1.0), (32, 32), image_size=48)
    GuardedDataLoader(dataset, batch_size=1, num_workers=2)
    dataset.in_flight[1] = dataset.in_flight.new_tensor([3, 1])
    message = loader_failure(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    assert message.startswith("DataLoader worker (pid 4242) is killed by signal: Killed: ")
    assert "worker 1 was loading sample 3, SyntheticPeople: record 3" in message
    assert loader_failure(RuntimeError("something else")) is None
    assert loader_failure(DataError("DataLoader worker said so")) is None


def test_bad_data_options_are_checked(tmp_path, capsys):
    from utils.options import parse_options

    with pytest.raises(SystemExit) as info:
        parse_options(["--maxBadFraction", "1.5", "--expDir", str(tmp_path)])
    assert info.value.code == 2
    assert "maxBadFraction: must be a fraction in [0, 1], got 1.5" in capsys.readouterr().err
    opts = parse_options(["--skipBadSamples", "1", "--allowOutsidePaths", "1", "--expDir", str(tmp_path)])
    assert opts.skipBadSamples and opts.allowOutsidePaths and opts.maxBadFraction == 0.01
