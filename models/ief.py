"""IEF: Human Pose Estimation with Iterative Error Feedback (Carreira, Agrawal, Fragkiadaki, Malik,
CVPR 2016, arXiv 1507.06550).

A network f reads the image together with one rendered map per joint of the current pose estimate
(3 + K input channels) and predicts a bounded correction of every joint; starting from the
training set's median pose y_0, y_{t+1} = y_t + f(image, g(y_t)) for T iterations. Training
follows Fixed Path Consolidation (FPC): the inputs are the points of a path fixed by the ground
truth, y_{t+1} = y_t + e(y*, y_t), where e moves every joint straight towards its true position
by at most L, and the network learns to predict each e.

Frames: poses are the project's normalised crop coordinates (RegressionCodec: x_n = (x_px + 0.5) /
W - 0.5, the crop spanning [-0.5, 0.5]). Step lengths, the bound L and the maps' width are
measured in "height units", pixels / H, so that a step is a Euclidean length in pixels on any
crop shape: a normalised difference (dx, dy) has length |(dx W / H, dy)|. The paper's L and
Gaussian width are in pixels of its 224 x 224 input; here they are options in those pixels and
scale with the crop: L / 224 of the crop height (20 px: 0.089 H).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.backbones import torchvision_backbone
from models.registry import register_model

PAPER_INPUT = 224  # the side of the paper's input crops; stepBound and renderSigma are its pixels


def render_joint_maps(pose: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """g(y): one Gaussian of peak 1 per joint at its position, (N, K, 2) normalised -> (N, K, H, W)
    float32 maps at the input resolution: exp(-((u - x)^2 + (v - y)^2) / (2 sigma^2)) at pixel
    (u, v), pixel centres at integers, ``sigma`` in input pixels. Separable: two 1-D Gaussians
    multiplied, so the maps cost K (H + W) exponentials, not K H W."""
    pose = pose.float()
    x = (pose[..., 0] + 0.5) * width - 0.5  # (N, K) input px
    y = (pose[..., 1] + 0.5) * height - 0.5
    columns = torch.arange(width, device=pose.device, dtype=torch.float32)
    rows = torch.arange(height, device=pose.device, dtype=torch.float32)
    across = torch.exp(-((columns - x[..., None]) ** 2) / (2 * sigma**2))  # (N, K, W)
    down = torch.exp(-((rows - y[..., None]) ** 2) / (2 * sigma**2))  # (N, K, H)
    return down[..., :, None] * across[..., None, :]


def clamp_length(step: torch.Tensor, bound: float, aspect: float) -> torch.Tensor:
    """``step`` (N, K, 2) normalised, each joint's shortened to length at most ``bound`` height
    units; ``aspect`` = W / H (a normalised dx is dx W / H height units). Python numbers only, so
    no constant crosses to the device."""
    squared = (step[..., 0] * aspect) ** 2 + step[..., 1] ** 2
    # floored before the root: sqrt's gradient at 0 is infinite (an untrained IEF's zero step)
    length = squared.clamp_min(1e-24).sqrt()[..., None]  # (N, K, 1)
    return step * torch.clamp(bound / length, max=1.0)


def bounded_towards(truth: torch.Tensor, pose: torch.Tensor, bound: float, aspect: float) -> torch.Tensor:
    """e(y*, y): per joint, the step from ``pose`` straight towards ``truth`` of length
    min(bound, |y* - y|) (the paper's Eq. 5), (N, K, 2) normalised; ``bound`` in height units,
    ``aspect`` = W / H."""
    return clamp_length(truth - pose, bound, aspect)


def fixed_path(
    start: torch.Tensor, truth: torch.Tensor, steps: int, bound: float, aspect: float
) -> list[torch.Tensor]:
    """FPC's fixed path [y_0, ..., y_steps], each (N, K, 2) normalised: y_0 = ``start`` and
    y_{t+1} = y_t + e(y*, y_t). Each joint moves by ``bound`` a step along the straight line to its
    true position and stays there once reached."""
    path = [start]
    for _ in range(steps):
        path.append(path[-1] + bounded_towards(truth, path[-1], bound, aspect))
    return path


def median_pose(joints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """y_0 from training poses: joints (N, K, 2) normalised, visible (N, K) -> (K, 2) float32,
    the median of each joint's coordinates over the poses where it is labelled (the paper's
    starting pose, "the median of ground truth 2D keypoint locations on training images"); 0 (the
    crop centre) for a joint labelled nowhere."""
    values = np.where((np.asarray(visible) > 0)[..., None], np.asarray(joints, dtype=np.float64), np.nan)
    labelled = ~np.isnan(values[..., 0]).all(axis=0)  # (K,)
    median = np.zeros(values.shape[1:], dtype=np.float64)
    if labelled.any():
        median[labelled] = np.nanmedian(values[:, labelled], axis=0)
    return median.astype(np.float32)


class IEF(nn.Module):
    """Iterative Error Feedback on a torchvision trunk (GoogLeNet, as the paper) whose first
    convolution reads 3 + K channels, global average pooling, and one linear layer giving each
    joint's correction in units of the bound L.

    ``forward(image)`` (evaluation, -predict, -export, and training without a target) runs
    ``n_iterations`` corrections from ``start_pose`` and returns the pose after each, (N, K, 2)
    normalised: every step is clamped to length L. ``forward(image, target)`` in training mode
    (the registry's ``trains_with_target``; ``target`` the RegressionCodec's (N, K, 2) ground
    truth) runs FPC: one pass over the first ``active_steps()`` points of the fixed path, batched,
    and returns for step t the pose y_{t-1} + eps_t carried along the rest of the fixed path,
    y* + (eps_t - e_t), so that the regression loss against y* is the paper's loss, the squared
    error of the predicted correction eps_t against its target e_t (Eq. 4 with h quadratic). Its
    last output is therefore not a pose estimate: the running training PCK counts the joints whose
    last correction lies within the threshold of its target.

    Departures from the paper and the authors' release (pulkitag/ief), and why:
      * the trunk is torchvision's GoogLeNet (batch normalisation, its 3x3 "5x5" branch, no
        auxiliary classifiers, no dropout before the regression layer): the one torchvision
        provides; the extra channels' first-layer filters start at zero over ImageNet weights;
      * the authors render maps valued K exp(-0.001 d^2) + T (K = 100, T = -50: sigma 22.4 px at
        224, the range of their mean-subtracted pixels) at rounded pixel positions; here peak-1
        Gaussians at exact sub-pixel positions, of ``render_sigma`` px at 224 scaled to the crop,
        on the scale of the normalised image channels;
      * no 17th "marking point" map (the authors mark the person's torso at the crop centre): the
        project's crops are already centred on one person's box;
      * steps are clamped to length L at test time (the authors add the raw output times L); the
        training loss compares the unclamped correction, whose gradient never vanishes;
      * the K corrections come from one linear layer over pooled features; maps are rendered from
        the detached pose (the authors' rendering layer has no backward either);
      * FPC's steps of one batch go through the network as one batch (their BatchNorm statistics
        shared); the consolidation schedule (Algorithm 1: one more path step every N epochs) runs
        over the loop's epochs through ``set_epoch``.
    """

    def __init__(
        self,
        n_joints: int,
        base_name: str,
        pretrained_path: str | None,
        n_iterations: int,
        step_bound: float,
        render_sigma: float,
        path_steps: int,
        step_epochs: int,
    ) -> None:
        super().__init__()
        for name, value in (("n_iterations", n_iterations), ("path_steps", path_steps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("step_bound", step_bound), ("render_sigma", render_sigma)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (pixels at the paper's 224 px input), got {value}")
        if step_epochs < 0:
            raise ValueError(f"step_epochs must be >= 0, got {step_epochs}")
        self.n_joints, self.n_iterations = n_joints, n_iterations
        self.bound = step_bound / PAPER_INPUT  # height units
        self.sigma = render_sigma / PAPER_INPUT  # height units
        self.path_steps, self.step_epochs = path_steps, step_epochs
        self.epoch: int | None = None  # set_epoch's; None: every path step (no schedule)
        self.trunk, channels = torchvision_backbone(base_name, pretrained_path, in_channels=3 + n_joints)
        self.head = nn.Linear(channels, 2 * n_joints)
        # Zero init: an untrained IEF predicts no correction, i.e. the starting pose itself.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # y_0, normalised (K, 2); set from the training poses (build.py), saved in checkpoints
        self.register_buffer("start_pose", torch.zeros(n_joints, 2))

    def set_start_pose(self, pose: np.ndarray | torch.Tensor) -> None:
        """y_0 (K, 2) normalised, e.g. :func:`median_pose` of the training poses."""
        self.start_pose.copy_(torch.as_tensor(pose, dtype=self.start_pose.dtype))

    def set_epoch(self, epoch: int) -> None:
        """The training epoch about to run (1-based), for FPC's consolidation schedule."""
        self.epoch = epoch

    def active_steps(self) -> int:
        """Fixed-path steps trained this epoch: one more every ``step_epochs`` epochs up to
        ``path_steps`` (Algorithm 1); all of them with ``step_epochs`` 0 or no epoch set."""
        if self.epoch is None or self.step_epochs == 0:
            return self.path_steps
        return min(self.path_steps, 1 + (max(self.epoch, 1) - 1) // self.step_epochs)

    def corrections(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """f: image (N, 3, H, W) and pose (N, K, 2) -> the raw corrections (N, K, 2) normalised,
        not yet clamped (the network's output times L)."""
        height, width = image.shape[-2:]
        maps = render_joint_maps(pose.detach(), height, width, self.sigma * height)  # (N, K, H, W)
        inputs = torch.cat([image, maps.to(image.dtype)], dim=1)  # (N, 3 + K, H, W)
        features = self.trunk(inputs).mean(dim=(2, 3))  # (N, C)
        # in the poses' dtype (float32, or float64 with -usedouble), whatever autocast computed
        raw = self.head(features).view(-1, self.n_joints, 2).to(self.start_pose.dtype) * self.bound
        return torch.stack([raw[..., 0] * (height / width), raw[..., 1]], dim=-1)  # normalised

    def forward(self, image: torch.Tensor, target: torch.Tensor | None = None) -> list[torch.Tensor]:
        if target is not None and self.training:
            return self._fixed_path_outputs(image, target)
        aspect = image.shape[-1] / image.shape[-2]
        pose = self.start_pose.expand(image.shape[0], -1, -1)  # (N, K, 2)
        outputs = []
        for _ in range(self.n_iterations):
            pose = pose + clamp_length(self.corrections(image, pose), self.bound, aspect)
            outputs.append(pose)
        return outputs

    def _fixed_path_outputs(self, image: torch.Tensor, truth: torch.Tensor) -> list[torch.Tensor]:
        """FPC: y* + (eps_t - e_t) for the active path steps t (see the class docstring)."""
        aspect, steps = image.shape[-1] / image.shape[-2], self.active_steps()
        truth = truth.to(self.start_pose.dtype)
        start = self.start_pose.expand(image.shape[0], -1, -1)
        path = fixed_path(start, truth, steps, self.bound, aspect)  # y_0 .. y_steps
        inputs = torch.cat(path[:-1])  # (steps * N, K, 2): every step's input pose at once
        predicted = self.corrections(image.repeat(steps, 1, 1, 1), inputs).chunk(steps)
        return [truth + (eps - (path[t + 1] - path[t])).to(truth.dtype) for t, eps in enumerate(predicted)]


@register_model(
    "IEF", target="regression", trains_with_target=True, stage_metrics="iter", uses_training_poses=True
)
def ief(
    n_joints: int = 16,
    base_name: str = "googlenet",
    pretrained_path: str | None = None,
    n_iterations: int = 4,
    step_bound: float = 20.0,
    render_sigma: float = 22.4,
    path_steps: int = 4,
    step_epochs: int = 3,
) -> IEF:
    """IEF at the paper's settings by default: GoogLeNet, T = 4 test iterations, corrections bounded
    by L = 20 px of a 224 px crop, FPC over 4 path steps with one more step every 3 epochs.

    ``render_sigma``: the joint maps' Gaussian width in px at 224; the paper gives none, and 22.4 is
    the default of the authors' released rendering layer (exp(-0.001 d^2)). ``base_name``: any
    backbone of models.backbones (its first convolution widened to 3 + K channels).
    """
    return IEF(
        n_joints, base_name, pretrained_path, n_iterations, step_bound, render_sigma, path_steps, step_epochs
    )
