"""DeepPose: Human Pose Estimation via Deep Neural Networks (Toshev & Szegedy, CVPR 2014)."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import torchvision_backbone
from models.registry import register_model

# Opposing torso joints whose distance is the pose "diameter" that sizes the refinement boxes
# (the paper: "such as left shoulder and right hip"). Other joint sets use the pose box diagonal.
TORSO_DIAGONALS: dict[int, tuple[int, int]] = {
    16: (13, 2),  # MPII: l_shoulder, r_hip
    17: (5, 12),  # COCO: left_shoulder, right_hip
}
MIN_BOX_FRACTION = 0.1  # refinement boxes never shrink below this fraction of the image's longer side


class PoseRegressor(nn.Module):
    """Stage 1: backbone -> global average pooling -> linear, (N, 3, H, W) -> (N, K, 2) coordinates
    normalised to the input crop (x_norm = (x_px + 0.5) / W - 0.5, so the crop spans [-0.5, 0.5])."""

    def __init__(self, n_joints: int, base_name: str, pretrained_path: str | None) -> None:
        super().__init__()
        self.n_joints = n_joints
        self.trunk, channels = torchvision_backbone(base_name, pretrained_path)
        self.head = nn.Linear(channels, 2 * n_joints)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.trunk(image).mean(dim=(2, 3))  # (N, C)
        return self.head(features).view(-1, self.n_joints, 2)  # (N, K, 2)


class RefinementStage(nn.Module):
    """One cascade stage: for every joint, crop a square sub-image centred on its current estimate,
    with side ``box_sigma * diam(pose)``, and regress that joint's displacement in the box's own
    normalised frame (the paper's y_i^s = y_i^(s-1) + N^-1(psi_i(N(x; b)); b)).

    As in the paper one network (one set of weights per stage) sees every joint's crop and its i-th
    output is the displacement of joint i; here that is a shared trunk plus a per-joint linear head.
    """

    def __init__(
        self,
        n_joints: int,
        base_name: str,
        pretrained_path: str | None,
        box_sigma: float,
        crop_size: int,
    ) -> None:
        super().__init__()
        self.n_joints = n_joints
        self.box_sigma = box_sigma
        self.crop_size = crop_size
        self.torso = TORSO_DIAGONALS.get(n_joints)
        self.trunk, channels = torchvision_backbone(base_name, pretrained_path)
        # Zero init: an untrained stage predicts no displacement, so adding a stage can never make
        # the previous estimate worse before it has learnt anything.
        self.weight = nn.Parameter(torch.zeros(n_joints, 2, channels))
        self.bias = nn.Parameter(torch.zeros(n_joints, 2))

    def box_side(self, centres: torch.Tensor) -> torch.Tensor:
        """Box side in pixels, ``box_sigma * diam``, from joint centres (N, K, 2) in pixels -> (N,)."""
        if self.torso is not None:
            a, b = self.torso
            diameter = (centres[:, a] - centres[:, b]).norm(dim=-1)
        else:
            diameter = (centres.amax(dim=1) - centres.amin(dim=1)).norm(dim=-1)
        return self.box_sigma * diameter

    def crop(self, image: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-images (N*K, 3, S, S), image by image and joint by joint, each centred on a joint of
        ``pose`` (N, K, 2, normalised), and the box side in pixels per image (N,)."""
        batch, _, height, width = image.shape
        size = self.crop_size or height
        scale = pose.new_tensor([width, height])
        # Continuous pixel coordinates (pixel i spans [i, i + 1]), the frame of roi_align(aligned=True).
        centres = (pose + 0.5) * scale  # (N, K, 2)
        side = self.box_side(centres).clamp(min=MIN_BOX_FRACTION * max(height, width))  # (N,)
        half = (side / 2).view(batch, 1, 1)
        boxes = torch.cat([centres - half, centres + half], dim=-1)  # (N, K, 4) x1, y1, x2, y2
        # roi_align's (N*K, 5) form, image index first: what it makes of a list of per-image boxes,
        # built without a loop over the batch, so an ONNX export keeps the batch size dynamic
        index = torch.arange(batch, dtype=boxes.dtype, device=boxes.device).view(batch, 1, 1)
        rois = torch.cat([index.expand(-1, boxes.shape[1], 1), boxes], dim=-1).reshape(-1, 5)
        # roi_align indexes pixels from the boxes: a NaN or infinite pose (a diverging step, an
        # fp16 overflow) crashed the process there; such a crop is meaningless but harmless, and
        # the pose itself stays non-finite for the loss to stop the run
        reach = 4.0 * max(height, width)
        rois = torch.nan_to_num(rois, nan=0.0).clamp(-reach, reach)
        from torchvision.ops import roi_align  # here: importing torchvision costs a process 3 s

        crops = roi_align(
            image,
            rois,
            output_size=(size, size),
            spatial_scale=1.0,
            sampling_ratio=2,
            aligned=True,
        )  # (N*K, 3, S, S)
        return crops, side

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image.shape
        # Each stage learns a displacement from the previous estimate, which it treats as given (the
        # paper trains the stages one after another); roi_align has no gradient for boxes anyway.
        pose = pose.detach()
        crops, side = self.crop(image, pose)  # (N*K, 3, S, S), (N,)
        features = self.trunk(crops).mean(dim=(2, 3)).view(batch, self.n_joints, -1)  # (N, K, C)
        # Joint i reads only its own output row: displacement in units of the box side.
        displacement = torch.einsum("nkc,kdc->nkd", features, self.weight) + self.bias  # (N, K, 2)
        scale = pose.new_tensor([width, height])
        return pose + displacement * side.view(batch, 1, 1) / scale  # (N, K, 2), normalised again


class DeepPose(nn.Module):
    """DeepPose: holistic regression of all joints followed by a cascade of per-joint refinements.

    Returns a list of ``1 + n_cascade`` poses (N, K, 2), one per stage, the refined one last; every
    stage is supervised with the same masked L2 loss on normalised coordinates.

    Differences from the paper, which used an AlexNet-style network (5 conv + 2 dropout FC layers) on
    220x220 crops and trained each cascade stage separately, with simulated previous-stage
    predictions as augmentation:
      * the regressor is a torchvision backbone with global pooling and one linear layer;
      * all stages train jointly in one graph: each stage detaches the previous estimate, so its loss
        only updates its own network, but it sees the previous stage's actual (not simulated) errors.
    Differences from the original PyTorch project (Naman-ntc/Pytorch-Human-Pose-Estimation), which
    had stage 1 only (a ResNet with a replaced fc layer): the cascade is implemented as in the paper.
    """

    def __init__(
        self,
        n_joints: int,
        base_name: str,
        n_cascade: int,
        pretrained_path: str | None,
        box_sigma: float,
        refine_base_name: str | None,
        crop_size: int,
    ) -> None:
        super().__init__()
        if n_cascade < 0:
            raise ValueError(f"n_cascade must be >= 0, got {n_cascade}")
        self.initial = PoseRegressor(n_joints, base_name, pretrained_path)
        refine_name = refine_base_name or base_name
        # An explicit weights file belongs to base_name; other refinement backbones use the cache.
        refine_path = pretrained_path if refine_name == base_name else None
        self.stages = nn.ModuleList(
            [
                RefinementStage(n_joints, refine_name, refine_path, box_sigma, crop_size)
                for _ in range(n_cascade)
            ]
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        pose = self.initial(image)  # (N, K, 2)
        outputs = [pose]
        for stage in self.stages:
            pose = stage(image, pose)  # (N, K, 2)
            outputs.append(pose)
        return outputs


@register_model("DeepPose", target="regression")
def deeppose(
    n_joints: int = 16,
    base_name: str = "resnet50",
    n_cascade: int = 0,
    pretrained_path: str | None = None,
    box_sigma: float = 2.0,
    refine_base_name: str | None = None,
    crop_size: int = 0,
) -> DeepPose:
    """DeepPose with a torchvision backbone (resnet18/34/50/101/152 or inception_v3).

    ``n_cascade`` refinement stages follow stage 1 (the paper used 3 stages in all: n_cascade=2).
    ``box_sigma`` scales the pose diameter into the refinement box side (the paper: 1.0 on the
    upper-body FLIC, 2.0 on the full-body LSP). ``refine_base_name`` picks a (e.g. smaller) backbone
    for the refinement stages, default ``base_name``. ``crop_size`` is the side of the sub-images
    they see; 0 means the input height, as in the paper where every stage has the same input size.
    Note that a refinement stage runs its network once per joint: it costs K times stage 1 at equal
    crop size.
    """
    return DeepPose(n_joints, base_name, n_cascade, pretrained_path, box_sigma, refine_base_name, crop_size)
