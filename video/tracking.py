"""Persons tracked across a video's frames: each pose of a frame gets a track id.

Each frame's poses are matched to the tracks alive before it (seen within the last
``memory + 1`` frames) by two cues, both in [0, 1]: the IoU of the person boxes and the OKS of the
keypoints (``metrics.coco``'s rule, with the box area as the object scale). A pose may continue a
track when either cue reaches its threshold, so a track survives a frame where the keypoints
alone are poor (a blurred frame, a weak model) as long as the box overlaps, and a frame where a
detector's box jumps as long as the joints agree. Among the allowed pairs the assignment that
maximises the summed IoU + OKS is taken (Hungarian, ``scipy.optimize.linear_sum_assignment``);
every pose left over starts a new track.

A track is compared where it is expected to be, not where it was last seen: its last box and
pose shifted by its velocity (the box centre's, in px per frame, averaged over its last steps)
times the frames since. So two persons who cross keep their ids, and a person who reappears
after a few missed frames is looked for further along the way they were going.

Smoothing lives with the track: each track owns a smoother (``video.smoothing.OneEuroFilter``)
fed with the track's raw poses and their times, so a track that comes back after a gap continues
its filter across the gap (a longer time step, which the filter weighs itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from metrics.coco import COCO_SIGMAS, cross_oks

# How much of a new step's displacement goes into a track's velocity: half, so one detector
# box's jitter moves the prediction by half as much, while a steady motion is learnt in a few frames.
VELOCITY_UPDATE = 0.5


def tracking_sigmas(sigmas: tuple[float, ...], num_joints: int) -> np.ndarray:
    """(K,) OKS sigmas for matching poses: the joint set's own, or for a set without them (MPII,
    synthetic) the mean of COCO's for every joint (a tolerance between a wrist's and a hip's)."""
    if len(sigmas) == num_joints:
        return np.asarray(sigmas, dtype=np.float64)
    return np.full(num_joints, float(COCO_SIGMAS.mean()))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (A, 4) with boxes b (B, 4), both [x, y, w, h] in pixels -> (A, B)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return inter / np.maximum(union, np.spacing(1))


def assign(score: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs of the assignment maximising the summed ``score`` (R, C), >= 0, over
    the ``allowed`` (R, C) pairs only, each row and column used at most once; sorted by row."""
    if score.size == 0 or not allowed.any():
        return []
    # a forbidden pair gains nothing, as leaving both unmatched does (scores are >= 0): the best
    # assignment is then the best over allowed pairs, even where fewer pairs score more
    rows, columns = linear_sum_assignment(np.where(allowed, -score, 0.0))
    return [(int(r), int(c)) for r, c in zip(rows, columns, strict=True) if allowed[r, c]]


@dataclass
class Track:
    """One person across frames: where they were last seen and how they were moving."""

    track_id: int
    box: np.ndarray  # (4,) x, y, w, h px: the last matched box
    pose: np.ndarray  # (K, 2) px: the last matched raw keypoints
    frame: int  # the frame of that match
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) px per frame
    steps: int = 0  # matches since the track started, each giving a velocity
    smoother: Callable[[np.ndarray, float], np.ndarray] | None = None  # (K, 2), seconds -> (K, 2)

    def expected(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(box (4,), pose (K, 2)) where the track is expected at ``frame``."""
        shift = self.velocity * (frame - self.frame)
        return self.box + np.array([shift[0], shift[1], 0.0, 0.0]), self.pose + shift

    def continue_with(self, frame: int, box: np.ndarray, pose: np.ndarray) -> None:
        step = (box[:2] + box[2:] / 2) - (self.box[:2] + self.box[2:] / 2)
        observed = step / (frame - self.frame)
        weight = 1.0 if self.steps == 0 else VELOCITY_UPDATE  # the first step is all there is to go on
        self.velocity = self.velocity + weight * (observed - self.velocity)
        self.box, self.pose, self.frame, self.steps = box, pose, frame, self.steps + 1


class PoseTracker:
    """Track ids for a video's poses, frame by frame, and (with a smoother) smoothed poses.

    Args:
        sigmas: (K,) OKS sigmas (``tracking_sigmas``).
        iou_threshold: a pose may continue a track when its box IoU with the track's expected box
            reaches this...
        oks_threshold: ...or when its OKS with the track's expected pose reaches this.
        memory: frames a track may go unmatched and still be continued (0: only from the frame
            just before).
        fps: frames per second, the smoother's clock.
        make_smoother: a new smoother for each new track, or None for raw poses.
    """

    def __init__(
        self,
        sigmas: np.ndarray,
        iou_threshold: float,
        oks_threshold: float,
        memory: int,
        fps: float = 25.0,
        make_smoother: Callable[[], Callable[[np.ndarray, float], np.ndarray]] | None = None,
    ) -> None:
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.iou_threshold, self.oks_threshold = iou_threshold, oks_threshold
        self.memory, self.fps, self.make_smoother = memory, fps, make_smoother
        self.tracks: list[Track] = []
        self.next_id = 0

    @property
    def smooths(self) -> bool:
        return self.make_smoother is not None

    def match(self, frame: int, boxes: np.ndarray, poses: np.ndarray) -> list[tuple[int, int]]:
        """(pose index, index into ``self.tracks``) pairs for boxes (N, 4) and poses (N, K, 2+)."""
        if not len(boxes) or not self.tracks:
            return []
        expected = [track.expected(frame) for track in self.tracks]
        track_boxes = np.stack([box for box, _ in expected])  # (T, 4)
        track_poses = np.stack([pose for _, pose in expected])  # (T, K, 2)
        iou = box_iou(boxes, track_boxes)  # (N, T)
        oks = cross_oks(poses[..., :2], boxes[:, 2] * boxes[:, 3], track_poses,
                        track_boxes[:, 2] * track_boxes[:, 3], self.sigmas)  # fmt: skip
        oks = np.nan_to_num(oks)  # a non-finite joint makes OKS NaN: that cue then says no
        allowed = (iou >= self.iou_threshold) | (oks >= self.oks_threshold)
        return assign(iou + oks, allowed)

    def update(self, frame: int, boxes: np.ndarray, poses: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Track ids (N,) and poses (N, K, 3) for one frame's boxes (N, 4) [x, y, w, h] px and raw
        poses (N, K, 3) x, y, confidence; the poses returned are smoothed in x and y when the
        tracker smooths (confidences as given), else the raw ones. Frames must come in order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        poses = np.asarray(poses, dtype=np.float64)
        self.tracks = [t for t in self.tracks if frame - t.frame <= self.memory + 1]
        matched = dict(self.match(frame, boxes, poses))
        ids, out = [], poses.copy()
        for index in range(len(boxes)):
            if index in matched:
                track = self.tracks[matched[index]]
                track.continue_with(frame, boxes[index], poses[index, :, :2])
            else:
                track = Track(self.next_id, boxes[index], poses[index, :, :2], frame)
                track.smoother = self.make_smoother() if self.make_smoother else None
                self.tracks.append(track)
                self.next_id += 1
            if track.smoother is not None:
                out[index, :, :2] = track.smoother(poses[index, :, :2], frame / self.fps)
            ids.append(track.track_id)
        return ids, out
