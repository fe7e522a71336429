"""Command line and config files.

Two configargparse files (``-DataConfig``, ``-ModelConfig``) hold ``key: value`` lines; any key
can also be given on the command line, which wins. Option names are those of the project this
one descends from, so its users' commands and config files keep working.

Bad input never produces a traceback: ``parse_options`` prints one line naming the key and value
at fault and where the value came from (``(in FILE)`` or ``(on the command line)``), and exits
with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import configargparse

from checkpoints import (
    is_resume,
    plan_run_dir,
    read_stored_config,
    refused_resume_changes,
    resume_changes,
)
from modes import MODES, command_keys
from utils.legacy_options import RETIRED_KEYS
from utils.legacy_options import translate as translate_original_keys
from utils.names import DATASETS, MODEL_NAMES
from utils.option_checks import (
    AMP_MODES,
    LR_SCHEDULES,
    PROGRESS_MODES,
    SMOOTH_MODES,
    check_and_derive,
    check_model_sizes,
)
from utils.option_errors import ON_COMMAND_LINE, OptionError, config_file_of, fail, typed_on_command_line
from utils.registry import close_match

if TYPE_CHECKING:
    from datasets.skeletons import JointSpec, PartHierarchy

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_CONFIG = REPO_ROOT / "conf" / "datasets" / "synthetic.defconf"
# The paper-sized hourglass takes days on a CPU; the demo uses a small one.
DEFAULT_MODEL_CONFIG = REPO_ROOT / "conf" / "models" / "StackedHourGlass-demo.defconf"


class Options(argparse.Namespace):
    """The options of one command, checked once by :func:`parse_options`: every key the parser
    declares (typed as parsed; None where the default is "the builder's or dataset's own"),
    then the values derived from them. What a config file or a checkpoint stores is ``config``."""

    # data
    DataConfig: str | None
    dataset: str
    dataDir: str
    trainAnnotation: str | None
    valAnnotation: str | None
    imageDir: str | None
    headBoxesMat: str | None
    bboxFile: str | None
    detScoreThreshold: float
    halfBodyProb: float
    TargetType: str | None
    nJoints: int | None
    jointSpec: str | None
    imageRes: int
    inputRes: int
    outputRes: int
    aspectRatio: float
    hmGauss: float
    maxTranslate: float
    maxScale: float
    maxRotate: float
    rotateProb: float
    flipProb: float
    colorJitter: float
    syntheticTrain: int
    syntheticVal: int
    flipTest: bool
    postProcess: str
    browse: int
    shuffle: bool
    nThreads: int
    cpuThreads: int
    data_loader_size: int
    dont_pin_memory: bool
    skipBadSamples: bool
    maxBadFraction: float
    allowOutsidePaths: bool
    imageCache: str
    # model
    ModelConfig: str | None
    model: str
    inputNorm: str
    coordConvention: str
    nChannels: int | None
    stemChannels: int | None
    nStack: int | None
    nModules: int | None
    nReductions: int | None
    baseWidth: int | None
    cardinality: int | None
    prmType: str | None
    LRNSize: int | None
    IterSize: int | None
    modelName: str | None
    hhKernel: int | None
    ohKernel: int | None
    baseName: str | None
    nCascade: int | None
    boxSigma: float | None
    refineBaseName: str | None
    cropSize: int | None
    hiddenChannels: int | None
    nPartStacks: int | None
    prmLevels: int | None
    nDeconv: int | None
    deconvFilters: int | None
    hrnetWidth: int | None
    rtmposeSize: str | None
    vitSize: str | None
    vitDecoder: str | None
    vitWidth: int | None
    vitDepth: int | None
    vitNumHeads: int | None
    dropPath: float | None
    nIterations: int | None
    stepBound: float | None
    renderSigma: float | None
    pathSteps: int | None
    stepEpochs: int | None
    simccSplitRatio: float
    simccSigma: str
    pretrainedPath: str | None
    # training
    nEpochs: int
    LR: float
    optimizer_type: str
    optimizer_pars: list[str] | None
    lrSchedule: str
    dropLR: int
    dropMag: float
    lrMilestones: str
    warmupSteps: int
    gradClip: float
    warmupStartFactor: float
    flatEpochs: int
    minLRFactor: float
    noDecayNormBias: bool
    layerDecay: float
    ema: bool
    emaMomentum: float
    emaGamma: float
    stage2Epoch: int
    stage2Augmentation: str
    mini_batch_count: int
    valInterval: int
    seed: int
    amp: str
    usedouble: bool
    channelsLast: bool
    deterministic: bool
    syncBN: bool
    compile: bool
    # checkpoint
    expDir: str
    expID: str
    loadModel: str
    resume: str
    loadOptim: bool
    loadEpoch: bool
    dropPreLoaded: bool
    dropMagPreLoaded: float
    saveInterval: int
    saveEveryMinutes: float
    allowConfigChange: bool
    # runtime
    test: bool
    predict: str
    export: str
    onnx: str
    detector: str
    detectorWeights: str
    drawThreshold: float
    smooth: str
    smoothMinCutoff: float
    smoothBeta: float
    smoothDCutoff: float
    trackIoU: float
    trackOKS: float
    trackMemory: int
    tensorboard: bool
    visdom: bool | None
    DEBUG: bool
    gpuid: int
    distTimeout: float
    progress: str
    worldCoors: str | None
    headSize: str | None
    # derived once (utils/option_checks.py, parse_options)
    target_type: str  # the model's: "heatmap", "regression", "simcc" or "compositional"
    simcc_sigma: tuple[float, float]  # simccSigma as (x, y) bins
    joint_spec: JointSpec  # the run's joint set (a custom spec's content is in jointSpec as JSON)
    hierarchy: PartHierarchy | None  # the joint set's levels of parts (DLCM's); None: it has none
    milestones: list[int]  # lrMilestones as epochs
    optimizer_kwargs: dict[str, Any]  # optimizer_pars as keyword arguments
    stage2_augmentation: dict[str, float]  # stage2Augmentation's keys and values
    origins: dict[str, str]  # key -> "(on the command line)" or "(in FILE)", for error messages
    config: dict[str, Any]  # the parser's own keys: what config.defconf and a checkpoint hold
    config_file_keys: set[str]  # the keys a config file can set (what config.defconf writes)
    stored_config: dict[str, Any] | None  # the --loadModel checkpoint's config
    restarts_stranded_run: bool  # --resume auto in a run directory stopped before its first checkpoint
    restart_note: str | None  # what --resume auto found, for the run's log
    resume_changes: dict[str, tuple[Any, Any]]  # key -> (stored, now) on a resume
    run_dir: Path  # where this command writes (checkpoints.plan_run_dir)


def _flag(value: str) -> bool:
    """Parse 0/1/true/false; the original project wrote boolean keys as integers."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")


class _OneLineParser(configargparse.ArgParser):
    """argparse prints usage plus a message on error; we print only the message, on one line,
    naming the config file when the bad value came from one."""

    def error(self, message: str) -> NoReturn:
        match = re.match(r"argument (-{1,2})(\w+)", message)
        if match:
            message = _with_origin(
                self, message, match.group(2), sys.argv[1:] if self._typed is None else self._typed
            )
        fail(message)

    _typed: list[str] | None = None  # the command line being parsed, to tell it from config files


def _origin(parser: configargparse.ArgParser, key: str, typed: list[str]) -> str | None:
    """Where ``key``'s value came from, as errors end: ``(on the command line)`` (the words of the
    unknown-key messages) or ``(in FILE)``; None for a default or a checkpoint's stored value."""
    if typed_on_command_line(key, typed):
        return ON_COMMAND_LINE
    origin = config_file_of(parser, key, typed)
    return f"(in {origin})" if origin else None


def _with_origin(parser: configargparse.ArgParser, message: str, key: str, typed: list[str]) -> str:
    origin = _origin(parser, key, typed)
    return f"{message} {origin}" if origin else message


def with_origin(opts: argparse.Namespace, message: str, key: str | None = None) -> str:
    """``message`` about ``key`` (by default the key it starts with, ``key: what is wrong``)
    followed by where that key's value came from (``opts.origins``, set by ``parse_options``), for
    the checks made after parsing too."""
    if key is None:
        match = re.match(r"-{0,2}(\w+): ", message)
        key = match.group(1) if match else ""
    origin = getattr(opts, "origins", {}).get(key)
    return f"{message} {origin}" if origin else message


def fail_option(opts: argparse.Namespace, message: str, key: str | None = None) -> NoReturn:
    """``fail`` for a check made after parsing: the message ends with where ``key``'s value came
    from (``with_origin``)."""
    fail(with_origin(opts, message, key))


# -predict's torchvision detector keeps person boxes from this score when --detScoreThreshold is 0
DEFAULT_DETECTOR_THRESHOLD = 0.5


def help_footer() -> str:
    modes = ", ".join(f"{mode.flag} {mode.metavar}" if mode.metavar else mode.flag for mode in MODES.values())
    return (
        "Every --key can also be set in a config file given with -DataConfig or -ModelConfig, one "
        "'key: value' per line (conf/datasets/ and conf/models/ hold the project's); the command line "
        "overrides config files, and without them the demo's (synthetic.defconf, "
        f"StackedHourGlass-demo.defconf) are used. Modes: {modes}; training otherwise. Docs: README.md "
        "and docs/running.md."
    )


class _DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS, ""):
            return text
        if action.nargs == 0:  # a flag: present or not
            return text
        if isinstance(action.default, bool):  # a 0/1 key, typed as 0 or 1
            return f"{text} (default: {int(action.default)})"
        return super()._get_help_string(action)


def build_parser() -> configargparse.ArgParser:
    parser = _OneLineParser(
        description="Train and evaluate 2D human pose estimation models.",
        epilog=help_footer(),
        add_config_file_help=False,  # configargparse's own footer says key=value and links a dead page
        formatter_class=_DefaultsOnceFormatter,
        config_file_parser_class=configargparse.DefaultConfigFileParser,
        allow_abbrev=False,  # --nEpoch must not silently mean --nEpochs
    )

    data = parser.add_argument_group("data")
    data.add_argument("-DataConfig", is_config_file=True, help="dataset config file (key: value lines)")
    data.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)}")
    data.add_argument("--dataDir", default="", help="dataset root directory (MPII, COCO, custom)")
    data.add_argument("--trainAnnotation", default=None, help="training annotation file (default: by layout)")
    data.add_argument("--valAnnotation", default=None, help="validation annotation file (default: by layout)")
    data.add_argument("--imageDir", default=None, help="image folder (default: by layout)")
    data.add_argument("--headBoxesMat", default=None, help="MPII: gt_valid.mat with head boxes for PCKh")
    data.add_argument(
        "--bboxFile",
        default=None,
        help="person boxes as JSON: for COCO validation and -test, detections in COCO results form "
        "(image_id, bbox, score); for -predict, entries with file_name (a video's own file name, with "
        "frame) or image_id, bbox [x, y, w, h] and an optional score (docs/inference.md)",
    )
    data.add_argument(
        "--detScoreThreshold",
        type=float,
        default=0.0,
        help="minimum score of a --bboxFile box (default 0: all are kept) and of a -predict --detector "
        f"box (default 0 means the detector's {DEFAULT_DETECTOR_THRESHOLD})",
    )
    data.add_argument("--halfBodyProb", type=float, default=0.0, help="COCO: probability of a half-body crop")
    data.add_argument(
        "--TargetType",
        default=None,
        help="the original project's key, heatmap or direct (regression); checked against the model's "
        "own target type (heatmap, regression, simcc or compositional), which is what a model trains "
        "with; default: the model's own",
    )
    data.add_argument("--nJoints", type=int, default=None, help="joints per person; default: the dataset's")
    data.add_argument(
        "--jointSpec",
        default=None,
        help="custom: joint spec JSON file (name, joints, flip_pairs, skeleton, sigmas); runs record "
        "its content, so a checkpoint needs no file",
    )
    data.add_argument("--imageRes", type=int, default=160, help="synthetic: side of the rendered images")
    data.add_argument("--inputRes", type=int, default=128, help="network input height in pixels")
    data.add_argument("--outputRes", type=int, default=32, help="heatmap height in pixels")
    data.add_argument("--aspectRatio", type=float, default=1.0, help="input width / height (COCO: 0.75)")
    data.add_argument("--hmGauss", type=float, default=1.0, help="heatmap Gaussian sigma in heatmap pixels")
    data.add_argument("--maxTranslate", type=float, default=0.0, help="max shift as a fraction of the box")
    data.add_argument("--maxScale", type=float, default=0.25, help="scale augmentation: 1 +- maxScale")
    data.add_argument("--maxRotate", type=float, default=30.0, help="rotation augmentation in degrees")
    data.add_argument("--rotateProb", type=float, default=0.6, help="probability of rotating a sample")
    data.add_argument("--flipProb", type=float, default=0.5, help="probability of a horizontal flip")
    data.add_argument("--colorJitter", type=float, default=0.2, help="per-channel gain 1 +- colorJitter")
    data.add_argument("--syntheticTrain", type=int, default=3000, help="synthetic: training persons")
    data.add_argument("--syntheticVal", type=int, default=500, help="synthetic: validation persons")
    data.add_argument(
        "--flipTest",
        type=_flag,
        default=True,
        help="average with the mirrored input's output, in validation and -test alike (0/1)",
    )
    data.add_argument(
        "--postProcess",
        default="quarter",
        help="heatmap decoding in validation, -test, -predict and the -export notes: quarter (argmax, "
        "then a quarter pixel towards the higher neighbour) or dark (Zhang et al. 2020: smooth with "
        "the training Gaussian, then a Taylor step on the log)",
    )
    data.add_argument("--shuffle", type=_flag, default=True, help="shuffle training data (0/1)")
    data.add_argument(
        "--nThreads",
        type=int,
        default=2,
        help="DataLoader worker processes (at most the cores there are; see --cpuThreads)",
    )
    data.add_argument("--data_loader_size", type=int, default=16, help="batch size")
    # the original took a value (-dont_pin_memory 1); a bare flag works too
    data.add_argument(
        "-dont_pin_memory",
        type=_flag,
        nargs="?",
        const=True,
        default=False,
        help="do not pin host memory on CUDA",
    )

    data.add_argument(
        "--skipBadSamples",
        type=_flag,
        default=False,
        help="skip corrupt records and images (listed in <run>/bad_samples.txt) instead of stopping (0/1)",
    )
    data.add_argument(
        "--maxBadFraction",
        type=float,
        default=0.01,
        help="with --skipBadSamples, stop anyway when more than this fraction of the data is bad",
    )
    data.add_argument(
        "--allowOutsidePaths",
        type=_flag,
        default=False,
        help="accept image paths in annotation files that are absolute or leave the image folder (0/1)",
    )
    data.add_argument(
        "--imageCache",
        default="",
        help="folder where decoded images are kept between epochs (memory-mapped, shared by the "
        "DataLoader workers; about width x height x 3 bytes per image and decode scale); empty: off",
    )

    model = parser.add_argument_group("model")
    model.add_argument("-ModelConfig", is_config_file=True, help="model config file (key: value lines)")
    model.add_argument(
        "--model",
        default="StackedHourGlass",
        help=f"one of {MODEL_NAMES} (case-insensitive)",
    )
    model.add_argument(
        "--inputNorm",
        default="imagenet",
        help="pixel format the weights expect: imagenet, unit (RGB in [0, 1], Newell et al.'s PyTorch port; "
        "StackedHourGlass, SimpleBaseline, HRNet, RTMPose) or bgr (BGR normalised with ImageNet's RGB-ordered mean "
        "and std, Simple Baselines' code; SimpleBaseline, HRNet, RTMPose); set by models.import_weights",
    )
    model.add_argument(
        "--coordConvention",
        default="project",
        help="coordinate convention the weights were trained in: project; for heatmap models also hrnet, "
        "princeton-vl or udp, for SimCC models mmpose (set by models.import_weights; training from "
        "scratch keeps project)",
    )
    model.add_argument("--nChannels", type=int, default=None, help="hourglass feature width")
    model.add_argument(
        "--stemChannels",
        type=int,
        default=None,
        help="StackedHourGlass: width of the stem's first convolution (then twice that, then nChannels); "
        "default nChannels / 4 (Newell et al.'s PyTorch port: 64 at every width; set by models.import_weights)",
    )
    model.add_argument("--nStack", type=int, default=None, help="number of stacked hourglasses")
    model.add_argument("--nModules", type=int, default=None, help="residual modules per hourglass step")
    model.add_argument("--nReductions", type=int, default=None, help="pooling steps inside an hourglass")
    model.add_argument("--baseWidth", type=int, default=None, help="PyraNet: channels per pyramid branch")
    model.add_argument("--cardinality", type=int, default=None, help="PyraNet: pyramid branches")
    model.add_argument("--prmType", default=None, help="PyraNet: pyramid residual module A, B, C or D")
    model.add_argument("--LRNSize", type=int, default=None, help="PoseAttention: CRF kernel size")
    model.add_argument("--IterSize", type=int, default=None, help="PoseAttention: mean-field iterations")
    model.add_argument("--modelName", default=None, help="ChainedPredictions: encoder (torchvision ResNet)")
    model.add_argument("--hhKernel", type=int, default=None, help="ChainedPredictions: hidden-hidden kernel")
    model.add_argument("--ohKernel", type=int, default=None, help="ChainedPredictions: output-hidden kernel")
    model.add_argument("--baseName", default=None, help="DeepPose, SimpleBaseline, IEF: torchvision backbone")
    model.add_argument("--nCascade", type=int, default=None, help="DeepPose: refinement stages")
    model.add_argument(
        "--boxSigma", type=float, default=None, help="DeepPose: refinement box / torso diameter"
    )
    model.add_argument("--refineBaseName", default=None, help="DeepPose: backbone of the refinement stages")
    model.add_argument("--cropSize", type=int, default=None, help="DeepPose: refinement crop side in pixels")
    model.add_argument(
        "--hiddenChannels", type=int, default=None, help="ChainedPredictions: hidden state width"
    )
    model.add_argument(
        "--nPartStacks", type=int, default=None, help="PoseAttention: stacks with part attention"
    )
    model.add_argument("--prmLevels", type=int, default=None, help="PyraNet: hourglass levels using pyramids")
    model.add_argument("--nDeconv", type=int, default=None, help="SimpleBaseline: transposed convolutions")
    model.add_argument(
        "--deconvFilters",
        type=int,
        default=None,
        help="SimpleBaseline, ViTPose (classic decoder): the transposed convolutions' filters",
    )
    model.add_argument("--hrnetWidth", type=int, default=None, help="HRNet: width, 32 or 48 (W32, W48)")
    model.add_argument("--rtmposeSize", default=None, help="RTMPose: size t, s, m or l (default m)")
    model.add_argument("--vitSize", default=None, help="ViTPose: the authors' size, S, B, L or H")
    model.add_argument(
        "--vitDecoder",
        default=None,
        help="ViTPose: classic (two 4x4 deconvolutions, 1x1 convolution) or simple (ReLU, bilinear x4, "
        "3x3 convolution)",
    )
    model.add_argument("--vitWidth", type=int, default=None, help="ViTPose: token width (default: vitSize's)")
    model.add_argument(
        "--vitDepth", type=int, default=None, help="ViTPose: transformer blocks (default: vitSize's)"
    )
    model.add_argument(
        "--vitNumHeads", type=int, default=None, help="ViTPose: attention heads (default: vitSize's)"
    )
    model.add_argument(
        "--dropPath",
        type=float,
        default=None,
        help="ViTPose: stochastic depth rate of the last block, rising linearly from 0 (default: vitSize's, "
        "the authors' 0.1, 0.3, 0.5, 0.55 for S, B, L, H)",
    )
    model.add_argument("--nIterations", type=int, default=None, help="IEF: corrections at test time (T)")
    model.add_argument(
        "--stepBound",
        type=float,
        default=None,
        help="IEF: longest correction L, in pixels of a 224 px crop (scaled to inputRes)",
    )
    model.add_argument(
        "--renderSigma",
        type=float,
        default=None,
        help="IEF: Gaussian width of the joint maps, in pixels of a 224 px crop (scaled to inputRes)",
    )
    model.add_argument("--pathSteps", type=int, default=None, help="IEF: steps of the fixed training path")
    model.add_argument(
        "--stepEpochs",
        type=int,
        default=None,
        help="IEF: epochs before the next fixed-path step joins training (0: every step from the start)",
    )
    model.add_argument(
        "--simccSplitRatio",
        type=float,
        default=2.0,
        help="SimCC models: bins per input pixel of the 1-D x and y classifications (MMPose's 2.0)",
    )
    model.add_argument(
        "--simccSigma",
        default="4.9,5.66",
        help="SimCC models: Gaussian label sigma in bins, x,y or one value for both (RTMPose: 4.9,5.66 "
        "at 256x192, 5.66,5.66 at 256x256)",
    )
    model.add_argument(
        "--pretrainedPath",
        default=None,
        help="local pre-trained weights for the backbone: ImageNet (torchvision backbones) or MAE (ViTPose)",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--nEpochs", type=int, default=8, help="training epochs")
    training.add_argument("--LR", type=float, default=2.5e-4, help="learning rate")
    training.add_argument("--optimizer_type", default="RMSprop", help="a torch.optim class name")
    training.add_argument(
        "--optimizer_pars", action="append", default=None, help="optimizer keyword, key=value (repeatable)"
    )
    training.add_argument("--lrSchedule", default="step", help=f"one of {', '.join(LR_SCHEDULES)}")
    training.add_argument("--dropLR", type=int, default=0, help="step: epochs between LR drops (0: never)")
    training.add_argument("--dropMag", type=float, default=0.1, help="LR multiplier at each drop")
    training.add_argument("--lrMilestones", default="", help="multistep: comma-separated epochs")
    _add_recipe_arguments(training)
    training.add_argument("--mini_batch_count", type=int, default=1, help="batches per optimizer step")
    training.add_argument("--valInterval", type=int, default=1, help="validate every N epochs")
    training.add_argument("--seed", type=int, default=0, help="seed for weights, data order, augmentation")
    training.add_argument("--amp", default="none", help=f"mixed precision: {', '.join(AMP_MODES)}")
    training.add_argument("-usedouble", action="store_true", help="train in float64")
    training.add_argument(
        "--channelsLast",
        type=_flag,
        default=True,
        help="channels_last memory format for the model and its inputs (0/1): faster for every model "
        "on the CPU too (benchmarks/training_step.py), same numbers up to float rounding",
    )
    training.add_argument(
        "--deterministic",
        type=_flag,
        default=False,
        help="reproducible training on CUDA (0/1): deterministic kernels, no cuDNN autotuning, no TF32; slower",
    )
    training.add_argument(
        "--syncBN",
        type=_flag,
        default=False,
        help="under torchrun on GPUs: BatchNorm statistics over all processes' batches (0/1)",
    )
    training.add_argument(
        "--compile",
        type=_flag,
        default=False,
        help="torch.compile the model for training (0/1; the first step compiles it, minutes on a CPU, "
        "and the run says how long it took)",
    )

    checkpoint = parser.add_argument_group("checkpoint")
    checkpoint.add_argument("--expDir", default="exp", help="root of run directories")
    checkpoint.add_argument("--expID", default="", help="run name; default: model and time")
    checkpoint.add_argument("--loadModel", default="", help="checkpoint to resume from or evaluate")
    checkpoint.add_argument(
        "--resume",
        default="",
        help="auto: continue the run --expID names from its last.pth if it has one, else start it there "
        "(what a cluster job script runs, so that a restart or requeue continues; docs/gpus.md)",
    )
    checkpoint.add_argument("--loadOptim", type=_flag, default=True, help="restore optimizer and schedule")
    checkpoint.add_argument("--loadEpoch", type=_flag, default=True, help="continue from the saved epoch")
    checkpoint.add_argument("--dropPreLoaded", type=_flag, default=False, help="scale the loaded LR once")
    checkpoint.add_argument("--dropMagPreLoaded", type=float, default=0.1, help="that LR multiplier")
    checkpoint.add_argument("--saveInterval", type=int, default=1, help="keep model_{epoch}.pth every N")
    checkpoint.add_argument(
        "--saveEveryMinutes",
        type=float,
        default=0.0,
        help="also write a resumable mid-epoch last.pth every N minutes (0: only at epoch ends)",
    )
    checkpoint.add_argument(
        "--allowConfigChange",
        type=_flag,
        default=False,
        help="let a resume change data or model keys (normally only training-steering keys may change)",
    )

    runtime = parser.add_argument_group("runtime")
    for mode in MODES.values():  # the modes' own options (modes.py)
        mode.add_argument(runtime)
    runtime.add_argument("--onnx", default="", help="-predict: run this exported ONNX model (onnxruntime)")
    runtime.add_argument(
        "--detector", default="", help="-predict: torchvision person detector, e.g. fasterrcnn_resnet50_fpn"
    )
    runtime.add_argument("--detectorWeights", default="", help="-predict: local weights file of --detector")
    runtime.add_argument(
        "--drawThreshold",
        type=float,
        default=0.3,
        help="-predict: joints of lower confidence are not drawn (they are still in keypoints.json; "
        "MMPose's visualiser uses 0.3)",
    )
    # video: persons tracked across frames, keypoints smoothed per person (docs/inference.md says
    # why these defaults suit 25-30 fps video)
    runtime.add_argument(
        "--smooth",
        default="none",
        help=f"-predict on a video: keypoints smoothed over time per tracked person, one of "
        f"{', '.join(SMOOTH_MODES)} (oneeuro: Casiez et al. 2012); the raw ones stay in keypoints_raw",
    )
    runtime.add_argument(
        "--smoothMinCutoff",
        type=float,
        default=1.0,
        help="--smooth oneeuro: cutoff frequency at rest, Hz (lower: steadier, more lag when slow)",
    )
    runtime.add_argument(
        "--smoothBeta",
        type=float,
        default=0.05,
        help="--smooth oneeuro: cutoff rise per px/s of joint speed, Hz (higher: less lag when moving)",
    )
    runtime.add_argument(
        "--smoothDCutoff", type=float, default=1.0, help="--smooth oneeuro: cutoff of the speed estimate, Hz"
    )
    runtime.add_argument(
        "--trackIoU",
        type=float,
        default=0.3,
        help="-predict on a video: a pose continues a track when its box IoU with the track's reaches this",
    )
    runtime.add_argument(
        "--trackOKS",
        type=float,
        default=0.5,
        help="-predict on a video: ... or when its keypoint OKS with the track's reaches this",
    )
    runtime.add_argument(
        "--trackMemory",
        type=int,
        default=15,
        help="-predict on a video: frames a person may be missed and still keep their track id",
    )
    runtime.add_argument(
        "--tensorboard", type=_flag, default=True, help="write TensorBoard events to <run>/tb"
    )
    # the original project's live-plot switch: 1 turns --tensorboard on, 0 leaves it (apply_visdom)
    runtime.add_argument("--visdom", type=_flag, default=None, help=argparse.SUPPRESS)
    runtime.add_argument("-DEBUG", action="store_true", help="batch 1, no shuffle, no workers")
    runtime.add_argument("--gpuid", type=int, default=0, help="CUDA device index (ignored without CUDA)")
    runtime.add_argument(
        "--cpuThreads",
        type=int,
        default=0,
        help="torch's CPU threads; 0: OMP_NUM_THREADS when set, else the cores left after one per "
        "DataLoader worker (a thread per core collapses on a CPU shared with other work; docs/performance.md)",
    )
    runtime.add_argument(
        "--distTimeout",
        type=float,
        default=600.0,
        help="seconds the processes of a distributed run wait to join, and for each other in a collective",
    )
    runtime.add_argument("--progress", default="auto", help=f"one of {', '.join(PROGRESS_MODES)}")
    # Keys of the original project that no longer do anything; accepted so its config files keep
    # working, with a notice (parse_options) instead of an error.
    for key in RETIRED_KEYS:
        runtime.add_argument(f"--{key}", default=None, help=argparse.SUPPRESS)
    return parser


def _add_recipe_arguments(group: argparse._ArgumentGroup) -> None:
    """The training recipe's options (docs/running.md, Training recipes)."""
    group.add_argument(
        "--warmupSteps",
        type=int,
        default=0,
        help="linear LR warm-up over the first N optimizer steps, with any lrSchedule (0: none; RTMPose "
        "1000, ViTPose 500)",
    )
    group.add_argument(
        "--gradClip",
        type=float,
        default=0.0,
        help="clip the gradients to this 2-norm over all parameters before each optimizer step "
        "(0: off; ViTPose 1.0, its configs' grad_clip max_norm)",
    )
    group.add_argument(
        "--warmupStartFactor",
        type=float,
        default=0.001,
        help="the warm-up's first LR as a fraction of LR (ViTPose 0.001, RTMPose 1e-5)",
    )
    group.add_argument(
        "--flatEpochs",
        type=int,
        default=0,
        help="flatcosine: epochs at a constant LR before the cosine starts (RTMPose: nEpochs / 2)",
    )
    group.add_argument(
        "--minLRFactor",
        type=float,
        default=0.05,
        help="flatcosine: the LR at the end of nEpochs as a fraction of LR (RTMPose 0.05)",
    )
    group.add_argument(
        "--noDecayNormBias",
        type=_flag,
        default=False,
        help="no weight decay on normalisation layers, biases and position embeddings / tokens (0/1)",
    )
    group.add_argument(
        "--layerDecay",
        type=float,
        default=0.0,
        help="layer-wise LR decay: layer i of a model's num_lr_layers L learns at LR x D^(L-1-i) "
        "(0 or 1: off; ViTPose-B 0.75); models with layer_index and num_lr_layers only",
    )
    group.add_argument(
        "--ema",
        type=_flag,
        default=False,
        help="keep an exponential moving average of the weights; validation, best.pth, -test, -predict "
        "and -export use it (0/1)",
    )
    group.add_argument(
        "--emaMomentum",
        type=float,
        default=0.0002,
        help="EMA: the weight of the current model in late updates (MMEngine's ExpMomentumEMA)",
    )
    group.add_argument(
        "--emaGamma",
        type=float,
        default=2000.0,
        help="EMA: how many updates the larger early weights take to fade (exp(-(1 + n) / gamma))",
    )
    group.add_argument(
        "--stage2Epoch",
        type=int,
        default=0,
        help="from this epoch on, training samples use stage2Augmentation (0: off; RTMPose: nEpochs - 29, "
        "its last 30 epochs)",
    )
    group.add_argument(
        "--stage2Augmentation",
        default="",
        help='the later epochs\' augmentation, "key=value,..." of maxScale, maxRotate, rotateProb, '
        "maxTranslate, flipProb, colorJitter, halfBodyProb (keys not given keep their value)",
    )


def _unknown_key_message(parser: configargparse.ArgParser, unknown: list[str], typed: list[str]) -> str:
    """Name the first unknown key, where it came from, and the right spelling or closest key."""
    spellings = {s.lstrip("-"): s for action in parser._actions for s in action.option_strings}
    for item in unknown:
        if not item.startswith("-"):
            continue
        key = item.lstrip("-").split("=", 1)[0]
        on_command_line = any(
            t.startswith("-") and t.split("=", 1)[0] == item.split("=", 1)[0] for t in typed
        )
        origin = "on the command line" if on_command_line else None
        if origin is None:
            origin = f"in {config_file_of(parser, key, typed) or 'a config file'}"
        written = item.split("=", 1)[0] if on_command_line else key
        if key in spellings:  # a known key with the wrong number of dashes
            right = spellings[key]
            dashes = "one dash" if right.startswith("-") and not right.startswith("--") else "two dashes"
            return f"unknown option {written!r} {origin}; did you mean {right!r} ({dashes})?"
        close = close_match(key, spellings)
        suggestion = (spellings[close] if on_command_line else close) if close else None
        hint = f"; did you mean {suggestion!r}?" if close else "; see --help for the valid keys"
        return f"unknown option {written!r} {origin}{hint}"
    return f"unexpected arguments: {' '.join(unknown)}"


def _with_default_configs(argv: list[str]) -> list[str]:
    """The demo configs where none is given. The demo data config is the synthetic dataset's: a
    ``--dataset`` typed on the command line that names another one does not inherit its keys (its
    ``nJoints: 16``, ``flipProb: 0``), while the demo model config still applies."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        return argv
    typed_dataset = _option_value(argv, "--dataset")
    other_dataset = typed_dataset is not None and typed_dataset.lower() != "synthetic"
    if not other_dataset and not any(a == "-DataConfig" or a.startswith("-DataConfig=") for a in argv):
        argv = ["-DataConfig", str(DEFAULT_DATA_CONFIG), *argv]
    if not any(a == "-ModelConfig" or a.startswith("-ModelConfig=") for a in argv):
        argv = ["-ModelConfig", str(DEFAULT_MODEL_CONFIG), *argv]
    return argv


def _option_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` on the command line (``--flag v`` or ``--flag=v``), if any."""
    for position, item in enumerate(argv):
        if item == flag and position + 1 < len(argv):
            return argv[position + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def config_of(parser: configargparse.ArgParser, opts: argparse.Namespace) -> dict[str, Any]:
    """The parser's own keys (not the values validate() derives): what config.defconf and a
    checkpoint's ``config`` hold."""
    return {
        action.dest: getattr(opts, action.dest)
        for action in parser._actions
        if action.dest not in ("help", "DataConfig", "ModelConfig")
    }


def config_file_keys() -> set[str]:
    """Options a config file can set: configargparse reads only ``--`` options from files, so
    single-dash command flags (-test, -usedouble, ...) stay on the command line."""
    return _settable(build_parser())


def _settable(parser: configargparse.ArgParser) -> set[str]:
    return {
        action.dest for action in parser._actions if any(o.startswith("--") for o in action.option_strings)
    }


def config_from_files(argv: list[str]) -> dict[str, Any]:
    """Options from config files and keys alone, unvalidated (a checkpoint's config written by a
    tool, e.g. models.import_weights; it is validated when the checkpoint is used)."""
    parser = build_parser()
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        fail(_unknown_key_message(parser, unknown, argv))
    return config_of(parser, opts)


class _EarlyParseError(Exception):
    pass


def _auto_resume(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """``--resume auto``: (the command line with ``--loadModel`` of the run's last.pth where it has
    one, whether the run directory is one stopped before its first checkpoint and starts again,
    the note saying which). The run is the directory --expID names, from the command line or a
    config file; anything that cannot be continued or started there is refused in one line."""
    parser = build_parser()

    def leave_it(message: str) -> NoReturn:  # a bad value: the full parse names it, with its origin
        raise _EarlyParseError(message)

    parser.error = leave_it
    try:
        early, _ = parser.parse_known_args(_with_default_configs(argv))
    except _EarlyParseError:
        return argv, False, None
    if not early.resume:
        return argv, False, None
    if early.resume != "auto":
        fail(f"resume: expects auto (or nothing), got {early.resume!r} {ON_COMMAND_LINE}")
    if _option_value(argv, "--loadModel"):
        fail(
            f"resume: --resume auto finds the run's own checkpoint; give it or --loadModel, not both {ON_COMMAND_LINE}"
        )
    for flag in (mode.flag for mode in MODES.values()):
        if any(a == flag or a.startswith(f"{flag}=") for a in argv):
            fail(
                f"resume: --resume auto continues a training run; it cannot be combined with {flag} {ON_COMMAND_LINE}"
            )
    if not early.expID:
        fail(
            f"resume: --resume auto needs --expID, the run's fixed name, so that a restarted or requeued job "
            f"finds the same run directory {ON_COMMAND_LINE}"
        )
    run_dir = (Path(early.expDir) / early.expID).resolve()
    last = run_dir / "last.pth"
    if last.is_file():
        return [*argv, "--loadModel", str(last)], False, None
    if not run_dir.exists():
        return argv, False, None
    if not run_dir.is_dir():
        fail(f"resume: {run_dir} is not a directory {ON_COMMAND_LINE}")
    from checkpoints import stranded_run_problem

    problem = stranded_run_problem(run_dir)
    if problem:
        fail(
            f"resume: {problem}: not a run --resume auto can start again; choose another --expID {ON_COMMAND_LINE}"
        )
    return (
        argv,
        True,
        (
            f"run directory {run_dir} held no checkpoint (stopped before its first one): starting the run again there"
        ),
    )


def _near_config_file(path: Path) -> str:
    """``; did you mean 'conf/models/HRNet-W32.defconf'?`` for a config file name that is a slip of
    one in the same folder (in the project's conf folders when that folder does not exist)."""
    conf = Path(__file__).resolve().parent.parent / "conf"
    folders = [path.parent] if path.parent.is_dir() else [conf / "models", conf / "datasets"]
    files = {file.stem: file for folder in folders for file in sorted(folder.glob("*.defconf"))}
    close = close_match(path.stem, files)
    if close is None:
        return ""
    shown = path.parent / files[close].name if path.parent.is_dir() else files[close]
    return f"; did you mean {str(shown)!r}?"


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse config files and command line; print one line and exit 2 on any bad input.

    With ``--loadModel`` the checkpoint's stored config is the starting point: config files and
    command-line keys given now override it, and the demo configs are not applied. A resume may
    change only ``STEERING_KEYS`` unless ``--allowConfigChange 1``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag in ("-DataConfig", "-ModelConfig"):
        if flag in argv:
            position = argv.index(flag)
            if position + 1 >= len(argv):
                fail(f"{flag}: expects a config file path {ON_COMMAND_LINE}")
            path = Path(argv[position + 1])
            if not path.is_file():
                fail(f"{flag}: config file not found: {path} {ON_COMMAND_LINE}{_near_config_file(path)}")
    parser = build_parser()
    asks_help = "-h" in argv or "--help" in argv
    argv, stranded, restart_note = (argv, False, None) if asks_help else _auto_resume(argv)
    source = None if asks_help else _option_value(argv, "--loadModel")
    stored: dict[str, Any] | None = None
    if source:
        if not Path(source).is_file():
            fail(f"loadModel: no checkpoint file at {source} {ON_COMMAND_LINE}")
        stored = read_stored_config(source)
        known = {action.dest for action in parser._actions}
        owned = command_keys()
        parser.set_defaults(**{k: v for k, v in stored.items() if k in known and k not in owned})
    else:
        argv = _with_default_configs(argv)
    parser._typed = [a for a in argv if a not in ("-DataConfig", "-ModelConfig")]
    opts, unknown = parser.parse_known_args(argv, namespace=Options())
    if unknown:
        fail(_unknown_key_message(parser, unknown, argv))
    opts.origins = {
        action.dest: origin
        for action in parser._actions
        if (origin := _origin(parser, action.dest, parser._typed)) is not None
    }
    translate_original_keys(parser, opts)
    try:
        check_and_derive(opts)
    except OptionError as error:
        fail(with_origin(opts, str(error)))
    opts.config = config_of(parser, opts)
    opts.config_file_keys = _settable(parser)
    opts.stored_config = stored
    opts.restarts_stranded_run, opts.restart_note = stranded, restart_note
    opts.resume_changes = {}
    if stored is not None and is_resume(opts):
        # a key the checkpoint predates had its default in that run
        defaults = {action.dest: action.default for action in parser._actions if action.dest not in stored}
        changes = resume_changes(opts, stored, defaults)
        refusal = refused_resume_changes(changes)
        if refusal and not opts.allowConfigChange:
            fail(refusal)
        opts.resume_changes = changes
    try:
        # after the resume check, so a resume that changes sizes is named as a resume
        check_model_sizes(opts)
        opts.run_dir = plan_run_dir(opts)
    except OptionError as error:
        fail(with_origin(opts, str(error)))
    return opts
