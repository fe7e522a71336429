"""How much ``--smooth oneeuro`` steadies a video's keypoints, and how far it lags a motion.

    python benchmarks/video_smoothing.py [--loadModel CHECKPOINT] [--epochs 300] [--fps 25]

Jitter is the mean, over frames, joints and persons, of the length of a joint's frame-to-frame
displacement minus its true displacement (px per frame): what moves that should not. Lag is how
far the smoothed joints trail behind along a steady motion, in frames (px behind / px per frame)
and in px, over the frames after the first ``WARM_UP`` (the filter starting at rest).

Two kinds of rows:

* synthetic: one joint with known truth, 2 s at rest and then 3 s at a steady 50 or 150 px/s,
  seen with Gaussian jitter of 1 and 3 px per coordinate (rows for the rest and for the motion). The truth is known, so these rows do not depend on any model.
* clips made from the COCO fixture ``000000000785.jpg`` (one skier, box 219 x 347 px): a 400 x 425
  window around them, 60 frames at ``--fps``, each frame with sensor noise (Gaussian, 4 grey
  levels) and mp4v compression: "still" (the same window) and "pan" (the window slides 1.5 px per
  frame, so the skier moves steadily by -1.5 px per frame). The person box comes from
  ``--bboxFile`` with frame keys: the annotated box, moved with the pan (a perfect detector).
  ``-predict --smooth oneeuro`` runs once per clip; its ``keypoints_raw`` are what ``--smooth none``
  gives (tests/test_video_predict.py checks they are equal).

The clips' keypoints come from ``--loadModel``, or else from a model fitted here to the four
COCO fixture images (the demo hourglass at 128 x 96, ``--epochs`` epochs of Adam on their 14
persons, about 2 minutes on 2 CPU cores): its keypoints land near the skier's joints because it
has seen this very person, as a good model's would, but its errors are not a trained model's.
The synthetic rows are the model-independent ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main as entry  # noqa: E402
from utils.options import build_parser  # noqa: E402
from video.smoothing import OneEuroFilter  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "data" / "coco_mini"
IMAGE, BOX = "000000000785.jpg", (281.0, 45.0, 219.0, 347.0)  # its one person's annotated box
WINDOW = (150.0, 0.0, 400, 425)  # x, y, width, height of the clip's first frame in the image
FRAMES, PAN, NOISE = 60, 1.5, 4.0  # frames per clip, px per frame, grey levels
WARM_UP = 10  # frames before the lag is measured
# the --smooth* defaults, read from the option parser so the table states what -predict does
MIN_CUTOFF, BETA, D_CUTOFF = (
    build_parser().get_default(key) for key in ("smoothMinCutoff", "smoothBeta", "smoothDCutoff")
)


def jitter(track: np.ndarray, truth_step: np.ndarray) -> float:
    """Mean length of (frame-to-frame displacement - true displacement (2,)), px, of one person's
    (T, K, 2) joints."""
    return float(np.linalg.norm(np.diff(track, axis=0) - truth_step, axis=-1).mean())


def lag(reference: np.ndarray, smoothed: np.ndarray, step: np.ndarray) -> tuple[float, float]:
    """(frames, px) the smoothed (T, K, 2) joints trail the reference ones (the truth, or raw
    joints, which have no lag, only noise that the mean averages out) along the steady motion
    ``step`` (2,) px per frame, after the warm-up."""
    speed = float(np.linalg.norm(step))
    behind = ((reference - smoothed)[WARM_UP:] @ (step / speed)).mean()
    return behind / speed, behind


def synthetic_rows(fps: float) -> list[list[str]]:
    """One joint with known truth: 2 s at rest, then 3 s at a steady speed, with Gaussian jitter."""
    rows = []
    rest, moving = round(2 * fps), round(3 * fps)
    for sigma in (1.0, 3.0):
        for speed in (0.0, 50.0, 150.0):  # px/s: at rest, a slow and a brisk motion
            step = np.array([speed / fps, 0.0])
            truth = np.zeros((rest + moving, 1, 2))
            truth[rest:, 0] = np.arange(1, moving + 1)[:, None] * step
            seen = truth + np.random.default_rng(0).normal(0, sigma, truth.shape)
            smooth = OneEuroFilter(MIN_CUTOFF, BETA, D_CUTOFF)
            out = np.stack([smooth(pose, n / fps) for n, pose in enumerate(seen)])
            part = slice(0, rest) if not speed else slice(rest, None)
            lagged = ("", "")
            if speed:
                frames, px = lag(truth[part], out[part], step)
                lagged = (f"{frames:.2f}", f"{px:.1f}")
            motion = f"{speed:g} px/s" if speed else "at rest"
            rows.append([f"synthetic joint, {motion}, jitter {sigma:g} px", "none (known truth)",
                         f"{jitter(seen[part], step):.2f}", f"{jitter(out[part], step):.2f}", *lagged])  # fmt: skip
    return rows


def write_clip(folder: Path, name: str, pan: float, fps: float) -> tuple[Path, list[dict]]:
    """The clip ``name`` and its boxes (``--bboxFile`` entries with frame keys)."""
    image = cv2.imread(str(FIXTURES / IMAGE))
    if image is None:
        sys.exit(f"fixture {FIXTURES / IMAGE} not found (the shared data lives in ../shared/data)")
    rng = np.random.default_rng(1)
    x0, y0, width, height = WINDOW
    path = folder / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    boxes = []
    for frame in range(FRAMES):
        left = x0 + pan * frame
        shift = np.array([[1.0, 0.0, -left], [0.0, 1.0, -y0]])
        window = cv2.warpAffine(image, shift, (width, height), flags=cv2.INTER_LINEAR)
        noisy = np.clip(window + rng.normal(0, NOISE, window.shape), 0, 255).astype(np.uint8)
        writer.write(noisy)
        box = [BOX[0] - left, BOX[1] - y0, BOX[2], BOX[3]]
        boxes.append({"file_name": name, "frame": frame, "bbox": box, "score": 1.0})
    writer.release()
    return path, boxes


def fit_model(folder: Path, epochs: int) -> Path:
    """The demo hourglass fitted to the COCO fixtures' persons (see the module's docstring)."""
    argv = ["-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--dataDir", str(FIXTURES),
            "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json", "--imageDir", ".",
            "--inputRes", "128", "--outputRes", "32", "--nEpochs", str(epochs), "--valInterval", str(epochs),
            "--saveInterval", str(epochs), "--nThreads", "0", "--data_loader_size", "8", "--progress", "none",
            "--optimizer_type", "Adam", "--LR", "2e-3", "--dropLR", str(max(1, epochs * 2 // 3)),
            "--maxRotate", "15", "--maxScale", "0.15", "--halfBodyProb", "0", "--tensorboard", "0",
            "--expDir", str(folder), "--expID", "fitted"]  # fmt: skip
    assert entry.main(argv) == 0
    return folder / "fitted" / "last.pth"


def clip_rows(folder: Path, checkpoint: Path, fps: float, model: str) -> list[list[str]]:
    rows = []
    for name, pan in (("still.mp4", 0.0), ("pan.mp4", PAN)):
        video, boxes = write_clip(folder, name, pan, fps)
        (folder / f"{name}.json").write_text(json.dumps(boxes))
        argv = ["-predict", str(video), "--loadModel", str(checkpoint), "--bboxFile", str(folder / f"{name}.json"),
                "--smooth", "oneeuro", "--expDir", str(folder / "runs"), "--expID", name, "--progress", "none"]  # fmt: skip
        assert entry.main(argv) == 0
        entries = json.loads((folder / "runs" / name / "keypoints.json").read_text())
        assert {e["track_id"] for e in entries} == {0}, "the one person should be one track"
        raw = np.array([e["keypoints_raw"] for e in entries]).reshape(FRAMES, -1, 3)[..., :2]
        smoothed = np.array([e["keypoints"] for e in entries]).reshape(FRAMES, -1, 3)[..., :2]
        step = np.array([-pan, 0.0])  # the skier's true motion in the frame
        lagged = ("", "")
        if pan:
            frames, px = lag(raw, smoothed, step)
            lagged = (f"{frames:.2f}", f"{px:.1f}")
        title = f"clip, {'still' if not pan else f'pan {pan:g} px/frame'} ({FRAMES} frames)"
        rows.append([title, model, f"{jitter(raw, step):.2f}", f"{jitter(smoothed, step):.2f}", *lagged])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loadModel", default="", help="checkpoint for the clips (default: fit one here)")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of the fitted model")
    parser.add_argument(
        "--fps", type=float, default=25.0, help="frame rate of the clips and the synthetic joint"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.loadModel:
            checkpoint, model = Path(args.loadModel), f"`{Path(args.loadModel).name}`"
        else:
            checkpoint, model = (
                fit_model(folder, args.epochs),
                f"demo hourglass fitted to the fixtures ({args.epochs} epochs)",
            )
        rows = synthetic_rows(args.fps) + clip_rows(folder, checkpoint, args.fps, model)
    print(f"\n`--smooth oneeuro` at its defaults (min_cutoff {MIN_CUTOFF:g} Hz, beta {BETA:g}, d_cutoff "
          f"{D_CUTOFF:g} Hz), {args.fps:g} fps; jitter in px per frame, lag after {WARM_UP} frames\n")  # fmt: skip
    header = ["sequence", "keypoints from", "jitter, raw", "jitter, oneeuro", "lag (frames)", "lag (px)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
