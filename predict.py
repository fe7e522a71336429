"""-predict: run a trained model on your own images, folders of images or videos.

    python main.py -predict photo.jpg --loadModel best.pth
    python main.py -predict photos/ --loadModel best.pth --bboxFile boxes.json
    python main.py -predict clip.mp4 --loadModel best.pth --detector fasterrcnn_resnet50_fpn

Frames are read upright, as a viewer shows them (a phone photo's EXIF orientation applied), and
everything is reported in that frame: boxes from ``--bboxFile`` or the detector, keypoints and the
drawn PNGs. Each person box becomes one crop exactly as in validation (padded 1.25x to the input
aspect ratio, placed by the checkpoint's coordinate convention), crops are batched across frames,
and poses are decoded back to frame pixels. Results go to a new run directory: ``keypoints.json``
(COCO's results layout plus the file name), one drawn PNG per image and one drawn MP4 per video,
named after the whole input name (``x.jpg`` -> ``x.jpg.png``), so two inputs never share one.

In a video each pose gets a ``track_id`` (the same person keeps it from frame to frame) and, with
``--smooth oneeuro``, keypoints smoothed over time per person, the raw ones kept beside them
(``video/``: tracking.py, smoothing.py).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from build import TrainedModel, load_trained
from datasets.base import DataError, normalise, read_image
from datasets.coco import box_to_center_scale
from engine import Precision, average_with_mirrored
from utils.distributed import choose_device
from utils.drawing import draw_person
from utils.logging import EpochProgress
from utils.options import DEFAULT_DETECTOR_THRESHOLD, fail
from utils.threads import apply_thread_plan
from utils.transforms import apply_affine, invert_affine, warp_image
from video.smoothing import OneEuroFilter
from video.tracking import PoseTracker, tracking_sigmas

if TYPE_CHECKING:
    from datasets.skeletons import JointSpec
    from utils.options import Options

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PERSON_LABEL = 1  # COCO's person class in torchvision's detectors
FALLBACK_FPS = 25.0  # a video whose container states no frame rate is taken to be PAL's
# one colour per track id (RGB, matplotlib's tab10), so a person keeps their colour in the drawn video
TRACK_COLORS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


@dataclass
class Frame:
    """One image or video frame and the persons found in it (filled in after the forward pass)."""

    name: str  # path relative to the -predict argument (the file name for a single file)
    index: int | None  # frame number in a video, None for an image
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, upright
    boxes: list[tuple[list[float], float]] = field(default_factory=list)  # ([x, y, w, h], score)
    poses: list[np.ndarray] = field(default_factory=list)  # (K, 3): x, y, confidence
    track_ids: list[int] | None = None  # per pose, in a video
    raw_poses: list[np.ndarray] | None = None  # (K, 3) per pose before smoothing, when smoothed


def find_images(root: Path) -> list[Path]:
    """``root`` itself, or every image file below the folder ``root`` (others ignored), sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


def count_frames(root: Path, images: list[Path]) -> int:
    """Frames to expect: the video's frame count, or the number of images."""
    if not images:
        capture = cv2.VideoCapture(str(root))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        return max(count, 1)
    return len(images)


def video_fps(path: Path) -> float:
    """The frame rate the video's container states, or ``FALLBACK_FPS`` (with a note) without one."""
    capture = cv2.VideoCapture(str(path))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    capture.release()
    if not (np.isfinite(fps) and 0 < fps <= 1000):
        print(f"note: -predict: {path} states no frame rate; taking {FALLBACK_FPS:g} frames per second")
        return FALLBACK_FPS
    return fps


def read_frames(root: Path, images: list[Path], skipped: list[str]) -> Iterator[Frame]:
    """Every readable frame of the video ``root``, or of ``images`` (found under ``root``);
    unreadable files are noted in ``skipped`` and passed over."""
    if not images:
        capture = cv2.VideoCapture(str(root))
        if not capture.isOpened():
            fail(f"-predict: {root} is neither an image nor a video OpenCV can open")
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield Frame(root.name, index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
        capture.release()
        return
    for path in images:
        name = path.name if root.is_file() else str(path.relative_to(root))
        try:
            yield Frame(name, None, read_image(path, upright=True))
        except DataError as error:
            skipped.append(f"{path}: {error}")


class BoxSource:
    """Person boxes for a frame: from a results-style JSON file, a torchvision detector, or the
    whole frame as one person."""

    def __init__(self, opts: Options, device: torch.device) -> None:
        self.by_name: dict[tuple[str, int | None], list[tuple[list[float], float]]] | None = None
        self.by_id: dict[int, list[tuple[list[float], float]]] = {}
        self.detector = None
        self.threshold = opts.detScoreThreshold if opts.detScoreThreshold > 0 else DEFAULT_DETECTOR_THRESHOLD
        self.file_threshold = opts.detScoreThreshold  # a box file's boxes are all kept by default
        self.device = device
        self.box_file = opts.bboxFile
        self.names_read: set[str] = set()  # the frames' names, for the note when no box matched
        self.matched = 0  # frames a box file gave boxes to
        if opts.bboxFile:
            self._read_box_file(Path(opts.bboxFile))
        elif opts.detector:
            self.detector = load_detector(opts.detector, opts.detectorWeights, device)

    def _read_box_file(self, path: Path) -> None:
        if not path.is_file():
            fail(f"bboxFile: no file at {path}")
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            fail(f"bboxFile: {path} is not readable JSON ({error})")
        if not isinstance(entries, list):
            fail(f"bboxFile: {path} must hold a JSON list of {{file_name or image_id, bbox, score}}")
        self.by_name = {}
        empty: list[int] = []  # boxes with no area: passed over, as a validation detection file's are
        for number, entry in enumerate(entries):
            try:
                box = [float(v) for v in entry["bbox"]]
                score = float(entry.get("score", 1.0))
                assert len(box) == 4 and all(np.isfinite(box))
            except (KeyError, TypeError, ValueError, AssertionError):
                fail(f"bboxFile: {path} entry {number} needs a bbox [x, y, w, h] of 4 numbers")
            if entry.get("category_id", PERSON_LABEL) != PERSON_LABEL or score < self.file_threshold:
                continue
            if box[2] <= 0 or box[3] <= 0:
                empty.append(number)
                continue
            if "file_name" in entry:
                key = (str(entry["file_name"]), entry.get("frame"))
                self.by_name.setdefault(key, []).append((box, score))
            elif "image_id" in entry:
                self.by_id.setdefault(int(entry["image_id"]), []).append((box, score))
            elif isinstance(entry.get("frame"), int):  # a frame of the one video being predicted
                self.by_name.setdefault((None, entry["frame"]), []).append((box, score))
            else:
                fail(
                    f"bboxFile: {path} entry {number} names neither file_name nor image_id (nor, for a "
                    f"video, a frame number)"
                )
        if empty:
            first = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            print(
                f"note: bboxFile: {path}: {len(empty)} box{'es' if len(empty) > 1 else ''} with width or "
                f"height <= 0 passed over (entr{'ies' if len(empty) > 1 else 'y'} {first})"
            )

    def __call__(self, frame: Frame) -> list[tuple[list[float], float]]:
        height, width = frame.pixels.shape[:2]
        if self.by_name is not None:
            self.names_read.add(frame.name)
            found = (
                self.by_name.get((frame.name, frame.index))
                or self.by_name.get((Path(frame.name).name, frame.index))
                or (self.by_name.get((None, frame.index), []) if frame.index is not None else [])
            )
            stem = Path(frame.name).stem
            if not found and stem.isdigit():  # COCO-style files are named by their image id
                found = self.by_id.get(int(stem), [])
            self.matched += bool(found)
            return found
        if self.detector is not None:
            return self._detect(frame.pixels)
        return [([0.0, 0.0, float(width), float(height)], 1.0)]

    def unmatched_note(self) -> str | None:
        """What to say when a box file gave no frame a box: its names are not the files read
        (a video's boxes take the video's file name, or no name, only ``frame``)."""
        if self.by_name is None or self.matched or not self.names_read:
            return None
        written = sorted({str(name) for name, _ in self.by_name if name is not None})
        shown = ", ".join(repr(name) for name in written[:3]) + (", ..." if len(written) > 3 else "")
        read = sorted(self.names_read)
        case_only = next(((n, seen) for n in written for seen in read if n.lower() == seen.lower()), None)
        hint = f" (names match exactly: {case_only[0]!r} is not {case_only[1]!r})" if case_only else ""
        return (
            f"bboxFile: {self.box_file}: no entry matched a frame read here, so no person was found; "
            f"its file names: {shown or 'none'}; read: {', '.join(repr(n) for n in read[:3])}"
            f"{', ...' if len(read) > 3 else ''}{hint}. A video's boxes take the video's file name and a "
            f"frame, or a frame alone (docs/inference.md)"
        )

    @torch.no_grad()
    def _detect(self, pixels: np.ndarray) -> list[tuple[list[float], float]]:
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).to(self.device)
        found = self.detector([image])[0]
        boxes = []
        for (x1, y1, x2, y2), label, score in zip(
            found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist(), strict=True
        ):
            if label == PERSON_LABEL and score >= self.threshold:
                boxes.append(([x1, y1, x2 - x1, y2 - y1], score))
        return boxes


def load_detector(name: str, weights_file: str, device: torch.device) -> torch.nn.Module:
    """A torchvision detector with local weights: ``--detectorWeights`` or torch's cache; nothing
    is downloaded, and without weights it says so in one line."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
        default = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        fail(f"detector: {name!r} is not a torchvision detection model (e.g. fasterrcnn_resnet50_fpn)")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
    path = Path(weights_file) if weights_file else cached
    if not path.is_file():
        fail(
            f"detector: no local weights for {name} at {path}; download {default.url} there "
            f"or pass --detectorWeights FILE (nothing is downloaded)"
        )
    model = builder(weights=None, weights_backbone=None, num_classes=len(default.meta["categories"]))
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # a file of other weights, or not a state dict at all
        fail(f"detectorWeights: {path} does not hold {name} weights ({str(error).splitlines()[0]})")
    return model.eval().to(device)


class PoseRunner:
    """Crops -> network (PyTorch or ONNX Runtime) -> poses in frame pixels, flip test included."""

    def __init__(
        self,
        trained: TrainedModel,
        flip_test: bool,
        onnx_path: str = "",
        amp: str = "none",
        channels_last: bool = False,
    ) -> None:
        """``amp`` and ``channels_last`` (the checkpoint's, normally) apply on CUDA, where they are
        what the network was trained and measured with; the CPU path stays float32 NCHW."""
        self.trained, self.flip_test = trained, flip_test
        on_gpu = trained.device.type == "cuda"
        self.precision = Precision(amp if on_gpu else "none")
        self.channels_last = channels_last and on_gpu
        if self.channels_last:
            trained.model.to(memory_format=torch.channels_last)
        self.session = None
        if onnx_path:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def crop(self, pixels: np.ndarray, box: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """(normalised (3, h, w) float32 crop, (2, 3) crop -> frame matrix) for one person box."""
        width, height = self.trained.input_size
        center, box_height = box_to_center_scale(np.asarray(box), width / height)
        matrix = self.trained.codec.convention.crop(center, box_height, self.trained.input_size)
        return normalise(warp_image(pixels, matrix, self.trained.input_size)), invert_affine(matrix)

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        if self.session is not None:
            name = self.session.get_inputs()[0].name
            return torch.from_numpy(self.trained.codec.join_outputs(self.session.run(None, {name: batch})))
        device = self.trained.device
        with torch.no_grad(), self.precision.autocast(device):
            image = torch.from_numpy(batch).to(device, non_blocking=device.type == "cuda")
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            return self.trained.model(image)[-1].float().cpu()

    def __call__(self, crops: np.ndarray, inverses: np.ndarray) -> np.ndarray:
        """crops (N, 3, h, w), inverses (N, 2, 3) -> poses (N, K, 3) in frame pixels."""
        output = self._forward(np.ascontiguousarray(crops, dtype=np.float32))
        codec = self.trained.codec
        if self.flip_test:
            mirrored = self._forward(np.ascontiguousarray(crops[..., ::-1], dtype=np.float32))
            permutation = self.trained.joint_spec.flip_permutation()
            output = average_with_mirrored(output, mirrored, permutation, codec)
        joints, scores = codec.decode(output.numpy())  # (N, K, 2) input px, (N, K)
        confidence = codec.confidence(scores)  # what keypoints.json gives per joint
        return np.concatenate([apply_affine(joints, inverses), confidence[..., None]], axis=-1)


def video_tracker(opts: Options, spec: JointSpec, fps: float) -> PoseTracker:
    """The tracker of a video's persons (--trackIoU, --trackOKS, --trackMemory), with a One-Euro
    filter per person under --smooth oneeuro, clocked by the video's frame rate."""
    smoother = None
    if opts.smooth == "oneeuro":
        smoother = functools.partial(OneEuroFilter, opts.smoothMinCutoff, opts.smoothBeta, opts.smoothDCutoff)
    sigmas = tracking_sigmas(spec.sigmas, spec.num_joints)
    return PoseTracker(sigmas, opts.trackIoU, opts.trackOKS, opts.trackMemory, fps, smoother)


def track_frame(tracker: PoseTracker, frame: Frame, num_joints: int) -> None:
    """A video frame's poses get their track ids and, when the tracker smooths, smoothed
    keypoints, the raw ones moving to ``raw_poses``."""
    boxes = np.array([box for box, _ in frame.boxes], dtype=np.float64).reshape(-1, 4)
    poses = np.stack(frame.poses) if frame.poses else np.zeros((0, num_joints, 3))
    frame.track_ids, smoothed = tracker.update(frame.index, boxes, poses)
    if tracker.smooths:
        frame.raw_poses, frame.poses = frame.poses, list(smoothed)


def drawn_name(name: str, suffix: str) -> str:
    """The drawing of input ``name`` (a path relative to the -predict argument): the whole name,
    extension included, plus ``suffix``, so two inputs never share a drawing (``x.jpg`` ->
    ``x.jpg.png``, ``x.png`` -> ``x.png.png``)."""
    return f"{name}{suffix}"


def write_outputs(
    frames: list[Frame],
    run_dir: Path,
    skeleton,
    left_joints,
    videos: dict,
    fps: float = FALLBACK_FPS,
    draw_threshold: float = 0.0,
) -> list[dict]:
    """Draw each finished frame (PNG per image, appended to the MP4 of a video, at ``fps``) and
    return its results entries. Each person is drawn in a colour of its own (a tracked one in its
    track's) with its box and its score (and track id); joints below ``draw_threshold`` are not
    drawn (they are in the entries)."""
    entries = []
    for frame in frames:
        drawn = frame.pixels
        for number, ((box, box_score), pose) in enumerate(zip(frame.boxes, frame.poses, strict=True)):
            track_id = None if frame.track_ids is None else frame.track_ids[number]
            color = TRACK_COLORS[(number if track_id is None else track_id) % len(TRACK_COLORS)]
            score = float(box_score * pose[:, 2].mean())
            label = f"{score:.2f}" if track_id is None else f"#{track_id} {score:.2f}"
            drawn = draw_person(drawn, pose, box, label, color, skeleton, left_joints, draw_threshold)
            entry = {
                "image": frame.name,
                "bbox": [round(v, 2) for v in box],
                "score": round(score, 5),
                "keypoints": [round(float(v), 3) for v in pose.reshape(-1)],
            }
            if frame.index is not None:
                entry["frame"] = frame.index
            if track_id is not None:
                entry["track_id"] = track_id
            if frame.raw_poses is not None:
                entry["keypoints_raw"] = [round(float(v), 3) for v in frame.raw_poses[number].reshape(-1)]
            entries.append(entry)
        bgr = cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)
        if frame.index is None:
            target = run_dir / drawn_name(frame.name, ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), bgr)
        else:
            if frame.name not in videos:
                height, width = bgr.shape[:2]
                target = run_dir / drawn_name(Path(frame.name).name, ".mp4")
                videos[frame.name] = cv2.VideoWriter(
                    str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                )
            videos[frame.name].write(bgr)
    return entries


def run(opts: Options) -> int:
    root = Path(opts.predict)
    images = [] if is_video(root) else find_images(root)
    if root.is_dir() and not images:  # before anything is loaded or written
        fail(
            f"-predict: folder {root} has no images (looked below it for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    device = choose_device(opts.gpuid)
    apply_thread_plan(opts.cpuThreads, 0)
    # onnxruntime runs the network on the CPU; the PyTorch model only lends its codec and joints
    trained = load_trained(opts, "cpu" if opts.onnx else device)
    if opts.onnx:
        print(f"running {opts.onnx} with onnxruntime (the checkpoint supplies the decoding)")
    runner = PoseRunner(trained, opts.flipTest, opts.onnx, opts.amp, bool(opts.channelsLast))
    boxes = BoxSource(opts, device)
    run_dir: Path = opts.run_dir
    run_dir.mkdir(parents=True, exist_ok=False)
    spec = trained.joint_spec
    progress = EpochProgress("predict", count_frames(root, images), opts.progress)
    fps = FALLBACK_FPS if images else video_fps(root)
    tracker = None if images else video_tracker(opts, spec, fps)
    if images and opts.smooth != "none":
        print(f"note: smooth: {opts.smooth} applies to videos; {root} is not one, so nothing is smoothed")
    skipped: list[str] = []
    entries: list[dict[str, Any]] = []
    videos: dict[str, Any] = {}
    pending: list[Frame] = []
    crops: list[np.ndarray] = []
    inverses: list[np.ndarray] = []
    started, frames_done = time.monotonic(), 0

    def flush() -> None:
        if crops:
            poses = runner(np.stack(crops), np.stack(inverses))
            cursor = 0
            for frame in pending:
                frame.poses = list(poses[cursor : cursor + len(frame.boxes)])
                cursor += len(frame.boxes)
        if tracker is not None:  # in frame order: pending holds the frames since the last flush
            for frame in pending:
                track_frame(tracker, frame, spec.num_joints)
        entries.extend(
            write_outputs(pending, run_dir, spec.skeleton, spec.left_joints, videos, fps, opts.drawThreshold)
        )
        pending.clear(), crops.clear(), inverses.clear()

    for frame in read_frames(root, images, skipped):
        frame.boxes = boxes(frame)
        for box, _ in frame.boxes:
            crop, inverse = runner.crop(frame.pixels, box)
            crops.append(crop)
            inverses.append(inverse)
        pending.append(frame)
        frames_done += 1
        progress.update()
        if len(crops) >= opts.data_loader_size:
            flush()
    flush()
    progress.finish()
    for writer in videos.values():
        writer.release()
    elapsed = time.monotonic() - started
    tracked = "" if tracker is None else f"; {tracker.next_id} person tracks"
    if tracker is not None and tracker.smooths:
        tracked += f", smoothed ({opts.smooth})"
    with open(run_dir / "keypoints.json", "w", encoding="utf-8") as stream:
        json.dump(entries, stream)
    for line in skipped:
        print(f"skipped {line}")
    joints = np.array([entry["keypoints"][2::3] for entry in entries]).reshape(-1)
    if joints.size:
        below = int((joints < opts.drawThreshold).sum())
        print(
            f"drawn: the joints of confidence {opts.drawThreshold:g} or more (--drawThreshold); "
            f"{below} of {joints.size} below it are not drawn (they are in keypoints.json)"
        )
    unmatched = boxes.unmatched_note()
    if unmatched:
        print(f"note: {unmatched}")
    print(
        f"{len(entries)} poses in {frames_done} frames, {frames_done / max(elapsed, 1e-9):.1f} images/s "
        f"({'flip test, ' if opts.flipTest else ''}{'onnxruntime on the cpu' if opts.onnx else device.type}); "
        f"{len(skipped)} unreadable files skipped{tracked}"
    )
    print(f"run directory: {run_dir} (keypoints.json and the drawn frames)")
    return 0
