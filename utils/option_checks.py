"""The checks and derived values of the options, applied once by ``utils.options.parse_options``.

:func:`check_and_derive` runs, in this order, checks (``_check_*``: they read the options and raise
an :class:`~utils.options.OptionError` naming the key and what is allowed) and derivations
(``_derive_*``: the values the options imply, set once: canonical names, the joint set and its
``hierarchy``, ``target_type``, ``milestones``, ``stage2_augmentation``, ``optimizer_kwargs``).
:func:`check_model_sizes` runs after a resume's changes are known.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modes import mode_of, mode_problem
from utils.legacy_options import target_type_spelled
from utils.option_errors import OptionError
from utils.registry import did_you_mean

if TYPE_CHECKING:
    from utils.options import Options

AMP_MODES = ("none", "bf16", "fp16")
LR_SCHEDULES = ("step", "multistep", "flatcosine")
PROGRESS_MODES = ("auto", "bar", "lines", "none")
INPUT_NORMS = ("imagenet", "unit", "bgr")
SMOOTH_MODES = ("none", "oneeuro")  # --smooth: raw keypoints, or video.smoothing.OneEuroFilter
# what --stage2Augmentation may set: the Augmentation fields in their order, then COCO's half-body
AUGMENTATION_KEYS = ("maxScale", "maxRotate", "rotateProb", "maxTranslate", "flipProb", "colorJitter",
                     "halfBodyProb")  # fmt: skip


def _error(message: str) -> Exception:
    return OptionError(message)


def check_and_derive(opts: Options) -> None:
    """Every check and derivation of the options, in the order their errors are reported."""
    entry, dataset = _derive_names(opts)
    _check_input_norm(opts, entry)
    _check_data_dir(opts, dataset)
    _derive_joint_set(opts, dataset)
    _check_target_type(opts, entry)
    opts.target_type = entry.target_type
    _check_hierarchy(opts, dataset)
    _check_numbers(opts, entry)
    _check_choices(opts)
    _derive_simcc_sigma(opts)
    _derive_schedule(opts)
    _check_recipe(opts)
    _derive_stage2(opts)
    _derive_optimizer(opts)
    _check_modes(opts)
    _check_video(opts)


def _derive_names(opts: Options) -> tuple[Any, Any]:
    """The model's and dataset's registry entries; their canonical spellings into the options."""
    from datasets.registry import UnknownDatasetError, get_dataset_entry
    from models.registry import UnknownModelError, get_entry

    try:
        entry = get_entry(opts.model)
    except UnknownModelError as error:
        raise _error(f"model: {error}") from None
    opts.model = entry.name
    try:
        dataset = get_dataset_entry(opts.dataset)
    except UnknownDatasetError as error:
        raise _error(f"dataset: {error}") from None
    opts.dataset = dataset.name
    return entry, dataset


def _check_input_norm(opts: Options, entry: Any) -> None:
    if opts.inputNorm not in INPUT_NORMS:
        raise _error(f"inputNorm: {opts.inputNorm!r} is not one of {', '.join(INPUT_NORMS)}")
    if opts.inputNorm != "imagenet" and "input_norm" not in entry.parameter_names():
        raise _error(
            f"inputNorm: model {entry.name} reads ImageNet-normalised RGB only, got {opts.inputNorm!r}"
        )


def _check_data_dir(opts: Options, dataset: Any) -> None:
    if (
        mode_of(opts).reads_data
        and dataset.needs_data_dir
        and not (opts.dataDir and Path(opts.dataDir).is_dir())
    ):
        raise _error(
            f"dataDir: {opts.dataDir!r} is not a directory (expected the {opts.dataset} dataset root there; "
            f"see docs/datasets.md)"
        )


def _derive_joint_set(opts: Options, dataset: Any) -> None:
    """``joint_spec``, the run's joints: the dataset's, or a custom spec, recorded as its JSON in
    ``jointSpec`` (the run records the spec's content, not its path: a checkpoint needs no spec
    file); ``hierarchy``, its levels of parts (None without); ``nJoints`` is the joint set's size,
    and a different one is an error."""
    from datasets.custom import SpecError, spec_to_json
    from datasets.registry import joint_spec_for

    opts.jointSpec = opts.jointSpec or None
    if dataset.joint_spec is not None and opts.jointSpec:
        raise _error(
            f"jointSpec: only --dataset custom reads a joint spec; {opts.dataset} has its own joints "
            f"(--jointSpec '' drops one taken from a checkpoint)"
        )
    try:
        opts.joint_spec = joint_spec_for(opts.dataset, opts.jointSpec)
    except SpecError as error:
        raise _error(str(error)) from None
    if dataset.joint_spec is None:
        opts.jointSpec = spec_to_json(opts.joint_spec)
    opts.hierarchy = opts.joint_spec.hierarchy
    dataset_joints = opts.joint_spec.num_joints
    if opts.nJoints is None:
        opts.nJoints = dataset_joints
    elif opts.nJoints != dataset_joints:
        spec, hint = "", ""
        if dataset.joint_spec is None:
            spec = f" (spec '{opts.joint_spec.name}')"
            hint = "; the spec sets it (conf/datasets/custom.defconf leaves it unset)"
        raise _error(
            f"nJoints: {opts.nJoints} disagrees with dataset {opts.dataset}{spec}, which has "
            f"{dataset_joints} joints{hint}"
        )


def _check_target_type(opts: Options, entry: Any) -> None:
    """The original project's ``TargetType`` must agree with the model's own target type."""
    spelled = target_type_spelled(opts.TargetType)
    if spelled == "?":
        raise _error(f"TargetType: {opts.TargetType!r} is not one of heatmap, direct")
    if spelled is not None and spelled != entry.target_type:
        predicts = {"heatmap": "heatmaps", "regression": "coordinates (direct)"}
        raise _error(
            f"TargetType: {opts.TargetType!r} disagrees with model {entry.name}, which predicts "
            f"{predicts.get(entry.target_type, entry.target_type + ' outputs')}"
        )


def _check_hierarchy(opts: Options, dataset: Any) -> None:
    """A model whose targets are the joint set's levels of parts (DLCM's compositional ones) needs
    a joint set that has some."""
    from datasets.codecs import TARGET_TYPES

    if not TARGET_TYPES.get(opts.target_type).needs_hierarchy or opts.hierarchy is not None:
        return
    if dataset.joint_spec is None:
        raise _error(
            f"jointSpec: spec '{opts.joint_spec.name}' has no 'hierarchy' key, which model {opts.model} "
            f"needs (its levels of parts; see docs/datasets.md, Your own keypoints)"
        )
    raise _error(
        f"model: {opts.model} needs a hierarchy of parts, which dataset {opts.dataset} does not have"
    )


# Range checks by key; a model key left unset (None) keeps its builder's default and is not checked.
POSITIVE = (
    "LR", "inputRes", "outputRes", "aspectRatio", "hmGauss", "data_loader_size", "mini_batch_count",
    "nEpochs", "valInterval", "saveInterval", "dropMag", "imageRes", "syntheticTrain", "syntheticVal",
    "stepBound", "renderSigma", "emaGamma",
)  # fmt: skip
NON_NEGATIVE = (
    "nThreads", "cpuThreads", "dropLR", "gpuid", "maxScale", "maxRotate", "maxTranslate", "colorJitter", "stepEpochs",
    "warmupSteps", "flatEpochs", "stage2Epoch", "gradClip",
)  # fmt: skip
FRACTIONS = ("warmupStartFactor", "minLRFactor", "layerDecay", "trackIoU", "trackOKS")
PROBABILITIES = ("rotateProb", "flipProb", "halfBodyProb")
AT_LEAST_ONE = (
    "nChannels", "nStack", "nModules", "nReductions", "nJoints", "nDeconv", "deconvFilters", "hrnetWidth",
    "stemChannels", "vitWidth", "vitDepth", "vitNumHeads", "nIterations", "pathSteps",
)  # fmt: skip


def _check_numbers(opts: Options, entry: Any) -> None:
    for key in POSITIVE:
        value = getattr(opts, key)
        if value is not None and not value > 0:  # NaN fails too
            raise _error(f"{key}: must be > 0, got {value}")
    for key in NON_NEGATIVE:
        value = getattr(opts, key)
        if value is not None and value < 0:
            raise _error(f"{key}: must be >= 0, got {value}")
    for key in FRACTIONS:
        if not 0 <= getattr(opts, key) <= 1:
            raise _error(f"{key}: must be in [0, 1], got {getattr(opts, key)}")
    for key in PROBABILITIES:
        if not 0 <= getattr(opts, key) <= 1:
            raise _error(f"{key}: must be a probability in [0, 1], got {getattr(opts, key)}")
    if not 0 <= opts.maxBadFraction <= 1:
        raise _error(f"maxBadFraction: must be a fraction in [0, 1], got {opts.maxBadFraction}")
    if round(opts.outputRes * opts.aspectRatio) < 1:
        raise _error(
            f"aspectRatio: {opts.aspectRatio} makes the heatmap (outputRes {opts.outputRes}) 0 pixels wide"
        )
    # a model stating its ratios gets them named instead, once a resume's changes are known (check_model_sizes)
    if opts.inputRes % opts.outputRes != 0 and entry.output_strides is None:
        raise _error(f"outputRes: {opts.outputRes} does not divide inputRes {opts.inputRes}")
    for key in AT_LEAST_ONE:
        value = getattr(opts, key)
        if value is not None and value < 1:
            raise _error(f"{key}: must be >= 1, got {value}")


def _check_choices(opts: Options) -> None:
    from datasets.codecs import CONVENTIONS, POST_PROCESSES, conventions_of, decodes_heatmaps

    if opts.coordConvention not in CONVENTIONS:
        raise _error(f"coordConvention: {opts.coordConvention!r} is not one of {', '.join(CONVENTIONS)}")
    allowed = conventions_of(opts.target_type)
    if opts.coordConvention not in allowed:
        raise _error(
            f"coordConvention: {opts.coordConvention!r} does not apply to {opts.target_type} models "
            f"({opts.model}): choose {' or '.join(allowed)}"
        )
    if opts.postProcess not in POST_PROCESSES:
        raise _error(f"postProcess: {opts.postProcess!r} is not one of {', '.join(POST_PROCESSES)}")
    if opts.postProcess != "quarter" and not decodes_heatmaps(opts.target_type):
        raise _error(f"postProcess: {opts.postProcess!r} applies to heatmap models only")
    for key, allowed in (("amp", AMP_MODES), ("lrSchedule", LR_SCHEDULES), ("progress", PROGRESS_MODES)):
        if getattr(opts, key) not in allowed:
            raise _error(f"{key}: {getattr(opts, key)!r} is not one of {', '.join(allowed)}")


def _derive_simcc_sigma(opts: Options) -> None:
    """``simcc_sigma``: simccSigma as (x, y) bins; one value serves both axes."""
    if not opts.simccSplitRatio > 0:
        raise _error(f"simccSplitRatio: must be > 0, got {opts.simccSplitRatio}")
    try:
        values = [float(v) for v in str(opts.simccSigma).replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise _error(
            f"simccSigma: {opts.simccSigma!r} is not one or two values > 0 (x,y in bins), e.g. 4.9,5.66"
        )
    opts.simcc_sigma = (values[0], values[-1])


def _derive_schedule(opts: Options) -> None:
    """``milestones``: the epochs of ``lrMilestones`` as integers."""
    try:
        opts.milestones = [int(m) for m in str(opts.lrMilestones).replace(" ", "").split(",") if m]
    except ValueError:
        raise _error(f"lrMilestones: {opts.lrMilestones!r} is not a comma-separated list of epochs") from None
    if opts.lrSchedule == "multistep" and not opts.milestones:
        raise _error("lrMilestones: multistep needs at least one epoch, e.g. --lrMilestones 60,90")


def _check_recipe(opts: Options) -> None:
    """The EMA momentum (docs/running.md, Training recipes; the recipe's other ranges are
    checked with the rest in _check_numbers)."""
    if not 0 < opts.emaMomentum <= 1:
        raise _error(f"emaMomentum: must be in (0, 1], got {opts.emaMomentum}")


def _derive_stage2(opts: Options) -> None:
    """``stage2_augmentation``: the keys ``stage2Augmentation`` sets, as numbers, checked as the
    keys themselves are; it goes with ``stage2Epoch`` (a run that ends before that epoch never
    switches: build.data_notes says so)."""
    opts.stage2_augmentation = parse_stage2_augmentation(opts.stage2Augmentation)
    if opts.stage2Epoch and not opts.stage2_augmentation:
        raise _error(
            f"stage2Epoch: {opts.stage2Epoch} switches to stage2Augmentation, which is empty; give it, e.g. "
            f'--stage2Augmentation "maxScale=0.25,maxRotate=30"'
        )
    if opts.stage2_augmentation and not opts.stage2Epoch:
        raise _error(
            "stage2Augmentation: is never used with stage2Epoch 0 (off); give the epoch it starts at"
        )


def parse_stage2_augmentation(text: str) -> dict[str, float]:
    """``"maxScale=0.25, maxRotate=30"`` -> ``{"maxScale": 0.25, "maxRotate": 30.0}``; only
    augmentation keys, each with a number in its key's range."""
    values: dict[str, float] = {}
    for item in str(text or "").split(","):
        if not item.strip():
            continue
        key, _, raw = (part.strip() for part in item.partition("="))
        if key not in AUGMENTATION_KEYS:
            hint = did_you_mean(key, AUGMENTATION_KEYS)
            raise _error(
                f"stage2Augmentation: {key!r} is not an augmentation key ({', '.join(AUGMENTATION_KEYS)})"
                f"{hint}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise _error(f"stage2Augmentation: {key}={raw!r} is not key=number") from None
        bounded = key in PROBABILITIES
        if not (0 <= value <= 1 if bounded else 0 <= value < math.inf):
            allowed = "a probability in [0, 1]" if bounded else ">= 0"
            raise _error(f"stage2Augmentation: {key} must be {allowed}, got {raw}")
        values[key] = value
    return values


def _derive_optimizer(opts: Options) -> None:
    """``optimizer_kwargs`` from ``optimizer_pars``, for a ``torch.optim`` class that exists."""
    import torch.optim

    optimizer = getattr(torch.optim, str(opts.optimizer_type), None)
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        names = sorted(
            n
            for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
        )
        hint = did_you_mean(opts.optimizer_type, names)
        raise _error(f"optimizer_type: {opts.optimizer_type!r} is not a torch.optim optimizer{hint}")
    opts.optimizer_kwargs = parse_optimizer_pars(opts.optimizer_pars)


def _check_modes(opts: Options) -> None:
    """One mode at a time, each with the files it needs."""
    if opts.browse < 0:
        raise _error(f"browse: must be >= 0, got {opts.browse}")
    problem = mode_problem(opts)
    if problem:
        raise _error(problem)
    if opts.predict and not Path(opts.predict).exists():
        raise _error(f"-predict: no image, folder or video at {opts.predict}")
    if opts.onnx and not Path(opts.onnx).is_file():
        raise _error(f"onnx: no ONNX model file at {opts.onnx}")
    if opts.loadModel and not Path(opts.loadModel).is_file():
        raise _error(f"loadModel: no checkpoint file at {opts.loadModel}")


def _check_video(opts: Options) -> None:
    """-predict on a video: the tracking and smoothing keys."""
    if opts.smooth not in SMOOTH_MODES:
        raise _error(f"smooth: {opts.smooth!r} is not one of {', '.join(SMOOTH_MODES)}")
    for key in ("smoothMinCutoff", "smoothDCutoff"):
        if not getattr(opts, key) > 0:  # also refuses nan
            raise _error(f"{key}: must be > 0 Hz, got {getattr(opts, key)}")
    if not opts.smoothBeta >= 0:
        raise _error(f"smoothBeta: must be >= 0, got {opts.smoothBeta}")
    if opts.trackMemory < 0:
        raise _error(f"trackMemory: must be >= 0 frames, got {opts.trackMemory}")


def check_model_sizes(opts: Options) -> None:
    """Refuse sizes the model's registry entry states it cannot build: an ``outputRes / inputRes``
    ratio it does not produce, or more halvings of the heatmap grid (``heatmap_halvings``, e.g. an
    hourglass's nReductions) than the grid has pixels for."""
    from datasets.codecs import decodes_heatmaps
    from models.registry import get_entry

    entry = get_entry(opts.model)
    input_res, output_res, aspect_ratio = opts.inputRes, opts.outputRes, opts.aspectRatio
    strides = entry.output_strides
    reachable = not input_res % output_res and input_res // output_res in (strides or ())
    heatmaps = decodes_heatmaps(entry.target_type)
    if heatmaps and strides is not None and not reachable:
        fits = [str(input_res // s) for s in strides if input_res % s == 0]
        hint = f" (outputRes {' or '.join(fits)} for inputRes {input_res})" if fits else ""
        raise _error(
            f"outputRes: {output_res} with inputRes {input_res} is a ratio {entry.name} cannot produce; "
            f"it accepts outputRes / inputRes {entry.output_ratios()}{hint}"
        )
    if not heatmaps or entry.heatmap_halvings is None:
        return
    key = entry.heatmap_halvings
    halvings = getattr(opts, key, None)
    halvings = entry.default(key) if halvings is None else halvings  # None: the builder's default
    height, width = output_res, round(output_res * aspect_ratio)
    if halvings >= 1 and min(height, width) >> halvings == 0:
        # each halving floors the grid; below 1 pixel there is nothing left to pool
        deepest = min(height, width).bit_length() - 1
        side = 1 << min(halvings, 62)  # the smallest grid side that takes every halving
        needed = max(side, math.ceil((side - 0.5) / aspect_ratio))
        while round(needed * aspect_ratio) < side:  # round() halves to even: at most a step or two
            needed += 1
        remedies = [f"{key} <= {deepest}"] if deepest >= 1 else []
        if halvings <= 16 or not remedies:
            remedies.append(f"outputRes >= {needed}")
            if input_res % output_res == 0:
                remedies[-1] += f" (inputRes {needed * (input_res // output_res)})"
        raise _error(
            f"{key}: {halvings} halvings of the {height}x{width} heatmap grid (outputRes {output_res}, "
            f"inputRes {input_res}) go below 1x1 in {entry.name}; use {' or '.join(remedies)}"
        )


def parse_optimizer_pars(pairs: list[str] | None) -> dict[str, Any]:
    """``["momentum=0.9", "nesterov=true"]`` -> ``{"momentum": 0.9, "nesterov": True}``."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        for item in str(pair).strip("[] ").split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise _error(f"optimizer_pars: {item.strip()!r} is not key=value (e.g. momentum=0.9)")
            key, raw = (part.strip() for part in item.split("=", 1))
            parsed[key] = _literal(raw)
    return parsed


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if raw.startswith("(") and raw.endswith(")"):
        return tuple(_literal(p.strip()) for p in raw[1:-1].split(";") if p.strip())
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
