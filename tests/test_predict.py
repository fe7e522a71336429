"""-predict on images, folders and videos, with boxes from a file or the whole frame; frames are
read upright (EXIF applied) and everything is reported in that frame."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_exif_orientation import STORED_H, STORED_W, write_tagged_jpeg

import main as entry
from utils.options import parse_options

pytestmark = pytest.mark.e2e  # every test uses the session's trained checkpoint (conftest, main.main)


def predict(tmp_path: Path, checkpoint: Path, target: Path, *extra: str) -> tuple[Path, list[dict]]:
    assert entry.main(["-predict", str(target), "--loadModel", str(checkpoint), "--expDir", str(tmp_path / "out"),
                       "--expID", "p", "--progress", "none", *extra]) == 0  # fmt: skip
    run = tmp_path / "out" / "p"
    return run, json.loads((run / "keypoints.json").read_text())


def test_a_folder_of_images_skips_what_it_cannot_read(tmp_path: Path, checkpoint: Path, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "a.png"), pixels)
    cv2.imwrite(str(photos / "nested" / "b.jpg"), pixels[:40])
    (photos / "broken.jpg").write_text("not a jpeg")
    (photos / "notes.txt").write_text("ignored: not an image")
    run, entries = predict(tmp_path, checkpoint, photos)
    assert sorted(e["image"] for e in entries) == ["a.png", "nested/b.jpg"]
    for entry_ in entries:
        keypoints = np.asarray(entry_["keypoints"]).reshape(-1, 3)
        assert keypoints.shape == (16, 3) and np.isfinite(keypoints).all()
        assert entry_["bbox"] == [0.0, 0.0, 80.0, 60.0 if entry_["image"] == "a.png" else 40.0]
    assert cv2.imread(str(run / "a.png.png")).shape == (60, 80, 3)
    assert cv2.imread(str(run / "nested" / "b.jpg.png")).shape == (40, 80, 3)
    out = capsys.readouterr().out
    assert (
        "skipped" in out and "broken.jpg" in out and "1 unreadable files skipped" in out and "images/s" in out
    )


def test_boxes_from_a_file_and_upright_frames(tmp_path: Path, checkpoint: Path) -> None:
    photos = tmp_path / "tagged"
    photos.mkdir()
    write_tagged_jpeg(photos / "phone.jpg")  # stored 96 wide x 48 tall, shown turned: 48 x 96
    boxes = [{"file_name": "phone.jpg", "bbox": [4, 10, 30, 60], "score": 0.9},
             {"file_name": "phone.jpg", "bbox": [10, 40, 20, 40], "score": 0.5}]  # fmt: skip
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    run, entries = predict(tmp_path, checkpoint, photos, "--bboxFile", str(tmp_path / "boxes.json"))
    assert [e["bbox"] for e in entries] == [[4, 10, 30, 60], [10, 40, 20, 40]]
    assert cv2.imread(str(run / "phone.jpg.png")).shape[:2] == (STORED_W, STORED_H)  # drawn upright
    # --detScoreThreshold drops a box file's weaker boxes
    _, kept = predict(tmp_path / "t", checkpoint, photos, "--bboxFile", str(tmp_path / "boxes.json"),
                      "--detScoreThreshold", "0.6")  # fmt: skip
    assert [e["bbox"] for e in kept] == [[4, 10, 30, 60]]
    # without boxes the whole upright frame is the person
    _, (whole,) = predict(tmp_path / "w", checkpoint, photos / "phone.jpg")
    assert whole["bbox"] == [0.0, 0.0, float(STORED_H), float(STORED_W)]


def test_inputs_sharing_a_stem_get_a_drawing_each(tmp_path: Path, checkpoint: Path, capsys) -> None:
    # x.jpg and x.png (and a.webp and a.jpg) used to be drawn to one x.png, the other drawing lost
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    sizes = {"x.jpg": (40, 64), "x.png": (48, 72), "a.webp": (36, 50), "a.jpg": (30, 44)}
    for name, (height, width) in sizes.items():
        assert cv2.imwrite(str(photos / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    run, entries = predict(tmp_path, checkpoint, photos)
    assert sorted(e["image"] for e in entries) == sorted(sizes)
    drawings = sorted(p.name for p in run.iterdir() if p.suffix == ".png")
    assert drawings == sorted(f"{name}.png" for name in sizes)
    for name, (height, width) in sizes.items():  # each its own image's drawing
        assert cv2.imread(str(run / f"{name}.png")).shape == (height, width, 3)


def test_an_empty_folder_says_it_has_no_images(tmp_path: Path, checkpoint: Path, capsys) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("no pictures here")
    with pytest.raises(SystemExit) as exit_info:
        entry.main(
            ["-predict", str(folder), "--loadModel", str(checkpoint), "--expDir", str(tmp_path / "out")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"main.py: error: -predict: folder {folder} has no images (looked below it for ")
    assert not (tmp_path / "out").exists()  # stopped before a run directory was made
    assert "neither an image nor a video" not in err


def test_a_box_without_area_is_passed_over_with_a_note(tmp_path: Path, checkpoint: Path, capsys) -> None:
    # as a validation detection file's are, instead of stopping the run
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.zeros((40, 60, 3), dtype=np.uint8))
    boxes = [{"file_name": "a.png", "bbox": [4, 4, 20, 30], "score": 0.9},
             {"file_name": "a.png", "bbox": [10, 10, 0, 12], "score": 0.8}]  # fmt: skip
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    _, entries = predict(tmp_path, checkpoint, photos, "--bboxFile", str(tmp_path / "boxes.json"))
    assert [e["bbox"] for e in entries] == [[4, 4, 20, 30]]
    out = capsys.readouterr().out
    assert (
        f"note: bboxFile: {tmp_path / 'boxes.json'}: 1 box with width or height <= 0 passed over (entry 1)"
        in out
    )


def test_a_video_gives_a_drawn_video_and_frame_numbers(tmp_path: Path, checkpoint: Path) -> None:
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for frame in range(5):
        writer.write(np.full((48, 64, 3), 40 * frame, dtype=np.uint8))
    writer.release()
    run, entries = predict(tmp_path, checkpoint, video, "--flipTest", "1")
    assert [e["frame"] for e in entries] == [0, 1, 2, 3, 4] and {e["image"] for e in entries} == {"clip.mp4"}
    drawn = cv2.VideoCapture(str(run / "clip.mp4.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert (drawn.get(cv2.CAP_PROP_FRAME_WIDTH), drawn.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)


def test_bad_input_is_one_line(tmp_path: Path, checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["-predict", str(tmp_path / "missing.jpg"), "--loadModel", str(checkpoint)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"main.py: error: -predict: no image, folder or video at {tmp_path / 'missing.jpg'} (on the command line)"
    )
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["-predict", str(image), "--loadModel", str(checkpoint), "--expDir", str(tmp_path),
                    "--detector", "fasterrcnn_resnet50_fpn", "--detectorWeights", str(tmp_path / "none.pth")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "detector: no local weights for fasterrcnn_resnet50_fpn" in err and "nothing is downloaded" in err


def test_onnx_predictions_match_pytorch(tmp_path: Path, checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    model = tmp_path / "model.onnx"
    assert entry.main(["-export", str(model), "--loadModel", str(checkpoint)]) == 0
    _, torch_entries = predict(tmp_path / "torch", checkpoint, photos, "--flipTest", "1")
    _, onnx_entries = predict(tmp_path / "onnx", checkpoint, photos, "--flipTest", "1", "--onnx", str(model))
    np.testing.assert_allclose(onnx_entries[0]["keypoints"], torch_entries[0]["keypoints"], atol=1e-3)
