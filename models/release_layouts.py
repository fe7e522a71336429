"""Parameter shapes of the authors' released networks, written out by hand from their Lua code.

These are what this project's PyraNet and PoseAttention are checked against (tests) and what the
README's "authors' release" column counts (``benchmarks/model_complexity.py``). Each function
walks the Lua model definition in module order and lists every learnable tensor: a convolution
gives its weight (out, in, kh, kw) and bias (out,); a BatchNorm its weight and bias (c,). Nothing
here builds a network.

* StackedHourGlass: Newell et al.'s PyTorch port, princeton-vl/pytorch_stacked_hourglass,
  ``models/posenet.py`` and ``models/layers.py`` (64/128-wide stem, hourglass depth 4). Its
  ``Residual`` always creates a 1x1 skip convolution but uses it only where the widths differ;
  ``include_unused`` counts those too.
* PyraNet: bearpaw/PyraNet, ``models/hg-prm.lua`` with ``models/layers/PRM.lua`` and
  ``models/layers/Residual.lua`` (hourglass depth fixed at 4 there; 64/128-wide stem).
* PoseAttention: bearpaw/pose-attention, ``train/models/hg-attention.lua`` with
  ``layers/Residual.lua``, ``layers/ResidualPool.lua`` and ``layers/AttentionPartsCRF.lua``.
"""

from __future__ import annotations

import math

Shape = tuple[int, ...]


def _conv(n_in: int, n_out: int, kernel: int) -> list[Shape]:
    return [(n_out, n_in, kernel, kernel), (n_out,)]


def _bn(channels: int) -> list[Shape]:
    return [(channels,), (channels,)]


def count(shapes: list[Shape]) -> int:
    return sum(math.prod(shape) for shape in shapes)


def _bottleneck(n_in: int, n_out: int) -> list[Shape]:
    """The pre-activation bottleneck all three codebases share: BN, 1x1 to out/2, BN, 3x3, BN, 1x1."""
    half = n_out // 2
    return (
        _bn(n_in)
        + _conv(n_in, half, 1)
        + _bn(half)
        + _conv(half, half, 3)
        + _bn(half)
        + _conv(half, n_out, 1)
    )


# ------------------------------------------------------------------------------ Stacked Hourglass


def _port_residual(n_in: int, n_out: int, include_unused: bool) -> list[Shape]:
    """princeton-vl ``Residual``: bn1, conv1 (1x1), bn2, conv2 (3x3), bn3, conv3 (1x1), skip_layer."""
    shapes = _bottleneck(n_in, n_out)
    if n_in != n_out or include_unused:
        shapes += _conv(n_in, n_out, 1)
    return shapes


def _port_hourglass(n: int, feats: int, include_unused: bool) -> list[Shape]:
    shapes = _port_residual(feats, feats, include_unused) * 2  # up1, low1
    if n > 1:
        shapes += _port_hourglass(n - 1, feats, include_unused)  # low2
    else:
        shapes += _port_residual(feats, feats, include_unused)
    return shapes + _port_residual(feats, feats, include_unused)  # low3


def stacked_hourglass_release_shapes(
    n_joints: int = 16, n_feats: int = 256, n_stack: int = 8, include_unused: bool = False
) -> list[Shape]:
    """``PoseNet(nstack, inp_dim, oup_dim)`` of the port, module by module: ``pre``, ``hgs``,
    ``features``, ``outs``, ``merge_features``, ``merge_preds``."""
    shapes = _conv(3, 64, 7) + _bn(64)
    for n_in, n_out in [(64, 128), (128, 128), (128, n_feats)]:
        shapes += _port_residual(n_in, n_out, include_unused)
    shapes += [s for _ in range(n_stack) for s in _port_hourglass(4, n_feats, include_unused)]
    features = _port_residual(n_feats, n_feats, include_unused) + _conv(n_feats, n_feats, 1) + _bn(n_feats)
    shapes += features * n_stack
    shapes += _conv(n_feats, n_joints, 1) * n_stack
    shapes += _conv(n_feats, n_feats, 1) * (n_stack - 1)
    return shapes + _conv(n_joints, n_feats, 1) * (n_stack - 1)


# ------------------------------------------------------------------------------ PyraNet


def _pyranet_residual(n_in: int, n_out: int, use_conv: bool) -> list[Shape]:
    """``Residual.lua`` (pre-activation bottleneck), skip BN-ReLU-1x1 when ``useConv`` or widths differ."""
    shapes = _bottleneck(n_in, n_out)
    if use_conv or n_in != n_out:
        shapes += _bn(n_in) + _conv(n_in, n_out, 1)
    return shapes


def _prm(
    n_in: int, n_out: int, preact: bool, use_conv: bool, base_width: int, cardinality: int
) -> list[Shape]:
    """``PRM.lua``: main branch and pyramid branch (shared 1x1 projection to D, C pooled 3x3
    convolutions, BN-ReLU, 1x1 back to out/2), summed, BN-ReLU-1x1; then the skip layer."""
    half, width = n_out // 2, math.floor(n_out / base_width)
    main = (_bn(n_in) if preact else []) + _conv(n_in, half, 1) + _bn(half) + _conv(half, half, 3)
    pyramid = (_bn(n_in) if preact else []) + _conv(n_in, width, 1) + _bn(width)
    for _ in range(cardinality):
        pyramid += _conv(width, width, 3)
    pyramid += _bn(width) + _conv(width, half, 1)
    shapes = main + pyramid + _bn(half) + _conv(half, n_out, 1)
    if use_conv or n_in != n_out:
        shapes += _bn(n_in) + _conv(n_in, n_out, 1)
    return shapes


def _pyranet_hourglass(n: int, feats: int, n_modules: int, base_width: int, cardinality: int) -> list[Shape]:
    def up_unit(use_conv: bool) -> list[Shape]:  # ResidualUp: a PRM while n >= 2
        if n >= 2:
            return _prm(feats, feats, True, use_conv, base_width, cardinality)
        return _pyranet_residual(feats, feats, use_conv)

    def down_unit(use_conv: bool) -> list[Shape]:  # ResidualDown: a PRM while n >= 3
        if n >= 3:
            return _prm(feats, feats, True, use_conv, base_width, cardinality)
        return _pyranet_residual(feats, feats, use_conv)

    shapes = [s for _ in range(n_modules) for s in up_unit(False)]  # up1
    shapes += [s for _ in range(n_modules) for s in down_unit(False)]  # low1
    if n > 1:
        shapes += _pyranet_hourglass(n - 1, feats, n_modules, base_width, cardinality)  # low2
    else:
        shapes += [s for _ in range(n_modules) for s in down_unit(False)]
    shapes += [s for _ in range(n_modules) for s in down_unit(True)]  # low3, useConv = true
    return shapes


def pyranet_release_shapes(
    n_joints: int = 16,
    n_feats: int = 256,
    n_stack: int = 8,
    n_modules: int = 1,
    base_width: int = 9,
    cardinality: int = 4,
) -> list[Shape]:
    """``createModel`` of ``hg-prm.lua`` (its options ``nClasses``, ``nFeats``, ``nStack``,
    ``nResidual``, ``baseWidth``, ``cardinality``; defaults are the paper's 8-stack network)."""
    shapes = _conv(3, 64, 7) + _bn(64)
    shapes += _prm(64, 128, False, False, base_width, cardinality)  # r1, 'no_preact'
    shapes += _prm(128, 128, True, False, base_width, cardinality)  # r4
    shapes += _prm(128, n_feats, True, False, base_width, cardinality)  # r5
    for stack in range(n_stack):
        shapes += _pyranet_hourglass(4, n_feats, n_modules, base_width, cardinality)
        shapes += _bn(n_feats)  # preact
        shapes += _conv(n_feats, n_feats, 1) + _bn(n_feats)  # lin
        shapes += _conv(n_feats, n_joints, 1)  # tmpOut
        if stack < n_stack - 1:
            shapes += _conv(n_feats, n_feats, 1) + _conv(n_joints, n_feats, 1)  # ll_, tmpOut_
    return shapes


# ------------------------------------------------------------------------------ PoseAttention


def _attention_residual(n_in: int, n_out: int) -> list[Shape]:
    """``Residual.lua`` of pose-attention: plain 1x1 conv on the skip when widths differ."""
    shapes = _bottleneck(n_in, n_out)
    if n_in != n_out:
        shapes += _conv(n_in, n_out, 1)
    return shapes


def _residual_pool(n_in: int, n_out: int) -> list[Shape]:
    """``ResidualPool.lua`` (the HRU): residual plus BN-ReLU-pool-3x3-BN-ReLU-3x3-upsample."""
    return (
        _attention_residual(n_in, n_out)
        + _bn(n_in)
        + _conv(n_in, n_out, 3)
        + _bn(n_out)
        + _conv(n_out, n_out, 3)
    )


def _attention_hourglass(n: int, feats: int, n_modules: int) -> list[Shape]:
    shapes: list[Shape] = []
    for module in range(n_modules):  # up: repResidual(f, ., n - 1), or Residual / ResidualPool at n = 1
        if n > 1:
            shapes += _attention_residual(feats, feats)
            for _ in range(n - 2):
                shapes += _residual_pool(feats, feats)
        else:
            shapes += _attention_residual(feats, feats) if module == 0 else _residual_pool(feats, feats)
    for _ in range(n_modules):  # low
        shapes += _attention_residual(feats, feats)
    if n > 1:
        shapes += _attention_hourglass(n - 1, feats, n_modules)  # low2
    else:
        shapes += _attention_residual(feats, feats)
    return shapes + _attention_residual(feats, feats)  # low3


def _attention_iter(n_in: int, lrn_size: int) -> list[Shape]:
    """``AttentionIter``: unary 3x3 conv to one map and one shared lrn x lrn message conv."""
    return _conv(n_in, 1, 3) + _conv(1, 1, lrn_size)


def _attention_parts(n_in: int, n_joints: int, lrn_size: int) -> list[Shape]:
    """``AttentionPartsCRF(usepart = 1)``: per joint an ``AttentionIter`` and a 1x1 conv to one map."""
    return [s for _ in range(n_joints) for s in _attention_iter(n_in, lrn_size) + _conv(n_in, 1, 1)]


def pose_attention_release_shapes(
    n_joints: int = 16,
    n_feats: int = 256,
    n_stack: int = 8,
    n_modules: int = 1,
    n_pool: int = 4,
    lrn_size: int = 11,
) -> list[Shape]:
    """``createModel`` of ``hg-attention.lua`` (options ``nFeats``, ``nStack``, ``nPool``,
    ``LRNKer``; ``n_modules`` is the release's ``nModual``, which it sets to 8 / nStack)."""
    shapes = _conv(3, 64, 7) + _bn(64)
    for n_in, n_out in [(64, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, n_feats)]:
        shapes += _attention_residual(n_in, n_out)  # r1 .. r6
    for stack in range(1, n_stack + 1):
        shapes += _attention_hourglass(n_pool, n_feats, n_modules)
        width = 2 * n_feats if stack == n_stack else n_feats
        shapes += _conv(n_feats, width, 1) + _bn(width)  # ll1
        shapes += _conv(width, width, 1) + _bn(width)  # ll2
        shapes += _attention_iter(width, lrn_size)  # holistic attention
        if stack == n_stack or stack > 4:
            shapes += _attention_parts(width, n_joints, lrn_size)
        else:
            shapes += _conv(width, n_joints, 1)
        if stack < n_stack:
            shapes += _conv(n_joints, 256, 1)  # outmap (256 hard-coded in the release)
            shapes += _conv(n_feats, n_feats, 1) + _bn(n_feats)  # ll3
    return shapes
