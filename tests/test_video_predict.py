"""-predict on videos made from a fixture image: track ids and smoothed keypoints in
keypoints.json and the drawn MP4, with whole-frame persons, boxes from --bboxFile, a detector and
--onnx."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main as entry
import predict
from conftest import SHARED_DATA, require_fixture

pytestmark = pytest.mark.e2e  # every test uses the session's trained checkpoint (conftest, main.main)

FPS = 12.0
WIDTH, HEIGHT = 128, 86  # a COCO fixture image, made small


@pytest.fixture
def picture() -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 BGR: a COCO fixture photo of people."""
    image = cv2.imread(str(require_fixture(SHARED_DATA / "coco_mini" / "000000196141.jpg")))
    return cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def predict_video(tmp_path: Path, checkpoint: Path, video: Path, *extra: str) -> tuple[Path, list[dict]]:
    out = tmp_path / "out"
    assert entry.main(["-predict", str(video), "--loadModel", str(checkpoint), "--expDir", str(out),
                       "--expID", "p", "--progress", "none", *extra]) == 0  # fmt: skip
    return out / "p", json.loads((out / "p" / "keypoints.json").read_text())


def keypoints(entries: list[dict], key: str = "keypoints") -> np.ndarray:
    """(N, K, 3) of the entries, in their order."""
    return np.array([e[key] for e in entries]).reshape(len(entries), -1, 3)


def jitter(poses: np.ndarray) -> float:
    """Mean frame-to-frame joint displacement, px, of one person's (T, K, 3) poses."""
    return float(np.linalg.norm(np.diff(poses[:, :, :2], axis=0), axis=-1).mean())


def test_a_still_image_as_a_video_is_one_person_track(
    tmp_path: Path, checkpoint: Path, picture, capsys
) -> None:
    # the photo with a little sensor noise per frame: the whole frame is one person, one track
    rng = np.random.default_rng(0)
    noisy = [np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    video = write_video(tmp_path / "still.mp4", noisy)
    run, smoothed = predict_video(tmp_path / "s", checkpoint, video, "--smooth", "oneeuro")
    assert [e["frame"] for e in smoothed] == list(range(10)) and {e["track_id"] for e in smoothed} == {0}
    assert "10 poses in 10 frames" in capsys.readouterr().out
    raw = keypoints(smoothed, "keypoints_raw")
    out = keypoints(smoothed)
    np.testing.assert_array_equal(out[0], raw[0])  # the first frame is its own estimate
    np.testing.assert_array_equal(out[:, :, 2], raw[:, :, 2])  # confidences as predicted
    assert jitter(out) < jitter(raw)
    drawn = cv2.VideoCapture(str(run / "still.mp4.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 10 and drawn.get(cv2.CAP_PROP_FPS) == FPS
    # without --smooth the keypoints are the raw ones, and there is no keypoints_raw
    _, plain = predict_video(tmp_path / "n", checkpoint, video)
    assert all("keypoints_raw" not in e for e in plain) and {e["track_id"] for e in plain} == {0}
    np.testing.assert_allclose(keypoints(plain), raw, atol=1e-3)
    # an image keeps its entry as it was: no track_id, nothing smoothed (and a note says so)
    cv2.imwrite(str(tmp_path / "photo.png"), picture)
    _, (image_entry,) = predict_video(
        tmp_path / "i", checkpoint, tmp_path / "photo.png", "--smooth", "oneeuro"
    )
    assert sorted(image_entry) == ["bbox", "image", "keypoints", "score"]
    assert "note: smooth: oneeuro applies to videos;" in capsys.readouterr().out


def two_person_boxes(frame: int) -> list[list[float]]:
    """Two persons' boxes drifting towards each other, [x, y, w, h]."""
    return [[4.0 + frame, 10.0, 50.0, 70.0], [70.0 - frame, 12.0, 50.0, 70.0]]


def test_boxes_from_a_file_keep_their_ids_across_a_missed_frame(
    tmp_path: Path, checkpoint: Path, picture
) -> None:
    video = write_video(tmp_path / "clip.mp4", [picture] * 8)
    boxes = [
        {"file_name": "clip.mp4", "frame": frame, "bbox": box, "score": 0.9}
        for frame in range(8)
        for number, box in enumerate(two_person_boxes(frame))
        if not (number == 1 and frame in (3, 4))  # the right person is missed twice
    ]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes[::-1]))  # in no particular order
    run, entries = predict_video(tmp_path, checkpoint, video, "--bboxFile", str(tmp_path / "boxes.json"),
                                 "--smooth", "oneeuro", "--trackMemory", "2")  # fmt: skip
    left = [e["track_id"] for e in entries if e["bbox"][0] < 30]
    right = [e["track_id"] for e in entries if e["bbox"][0] > 30]
    assert len(left) == 8 and len(right) == 6 and len(set(left)) == 1 and len(set(right)) == 1
    assert left[0] != right[0] and all("keypoints_raw" in e for e in entries)
    # a shorter memory than the gap: the right person comes back as a new track
    _, forgetful = predict_video(tmp_path / "f", checkpoint, video, "--bboxFile", str(tmp_path / "boxes.json"),
                                 "--trackMemory", "1")  # fmt: skip
    assert len({e["track_id"] for e in forgetful if e["bbox"][0] > 30}) == 2
    # the drawn video shows each person in their own colour: the right one's label box is orange
    drawn = cv2.VideoCapture(str(run / "clip.mp4.mp4"))
    ok, first = drawn.read()
    corner = first[13:19, 70:72].reshape(-1, 3).mean(axis=0)  # BGR: the label box's left margin
    expected = predict.TRACK_COLORS[right[0]][::-1]
    np.testing.assert_allclose(corner, expected, atol=40)


class FakeDetector:
    """Stands in for a torchvision detector (no weights here): two persons and a dog per frame."""

    def __init__(self) -> None:
        self.frame = 0

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = [[x, y, x + w, y + h] for x, y, w, h in two_person_boxes(self.frame)] + [[0, 0, 20, 20]]
        self.frame += 1
        return [{"boxes": torch.tensor(boxes), "labels": torch.tensor([1, 1, 18]),
                 "scores": torch.tensor([0.9, 0.8, 0.9])}]  # fmt: skip


def test_boxes_from_a_detector_are_tracked(tmp_path: Path, checkpoint: Path, picture, monkeypatch) -> None:
    monkeypatch.setattr(predict, "load_detector", lambda *args: FakeDetector())
    video = write_video(tmp_path / "clip.mp4", [picture] * 6)
    _, entries = predict_video(tmp_path, checkpoint, video, "--detector", "fasterrcnn_resnet50_fpn")
    assert [e["track_id"] for e in entries] == [0, 1] * 6
    assert [e["bbox"] for e in entries[-2:]] == two_person_boxes(5)


def test_onnx_tracks_and_smooths_as_pytorch_does(tmp_path: Path, checkpoint: Path, picture) -> None:
    frames = [np.roll(picture, 2 * shift, axis=1) for shift in range(6)]  # panning 2 px per frame
    video = write_video(tmp_path / "pan.mp4", frames)
    model = tmp_path / "model.onnx"
    assert entry.main(["-export", str(model), "--loadModel", str(checkpoint)]) == 0
    _, torch_entries = predict_video(tmp_path / "t", checkpoint, video, "--smooth", "oneeuro")
    _, onnx_entries = predict_video(
        tmp_path / "o", checkpoint, video, "--smooth", "oneeuro", "--onnx", str(model)
    )
    assert [e["track_id"] for e in onnx_entries] == [e["track_id"] for e in torch_entries] == [0] * 6
    for key in ("keypoints_raw", "keypoints"):
        np.testing.assert_allclose(keypoints(onnx_entries, key), keypoints(torch_entries, key), atol=1e-3)
