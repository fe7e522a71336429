"""How far each heatmap decoding lands from the true joint, and how long it takes.

    python benchmarks/decoding_accuracy.py [--quick] [--sigma 2] [--sets 2000]

Gaussians of the training sigma are rendered by ``HeatmapCodec.encode`` at uniformly random
sub-pixel centres anywhere on 64x48 (height x width) maps, COCO's heatmap size, 17 joints a set.
Noise is independent per pixel, normal with the given standard deviation (the peak is 1). The
error is the mean distance in heatmap pixels between the decoded and the true centre, over all
centres and over the interior ones (at least 3 sigma from every edge). Decodings:

* argmax: the highest pixel;
* quarter: ``--postProcess quarter``, the argmax moved a quarter pixel towards the higher neighbour;
* DARK: ``--postProcess dark`` (``datasets.codecs.dark_peaks``);
* DARK, paper's choices: the same smoothing and Taylor step, but expanded at the raw map's argmax
  and on the smoothed map up to the edge, as the paper's code does; the row shows what the two
  deviations of ``dark_peaks`` buy.

The time is one decode of 64 sets of 17 float32 maps (the median of several runs) on this
machine's CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.codecs import HeatmapCodec, argmax_peaks, modulate, taylor_step  # noqa: E402

HEIGHT, WIDTH, JOINTS = 64, 48, 17
NOISES = (0.0, 0.05, 0.1)


def paper_choices(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """DARK expanded at the raw argmax on the smoothed map everywhere (N, K, 2) heatmap px."""
    x, y, _ = argmax_peaks(heatmaps)
    return taylor_step(modulate(heatmaps, sigma), x, y)


def render(codec: HeatmapCodec, centres: np.ndarray) -> np.ndarray:
    """centres (N, K, 2) heatmap px -> heatmaps (N, K, H, W); the codec's input frame is its
    heatmap frame here (stride 1)."""
    visible = np.ones(centres.shape[1])
    return np.stack([codec.encode(person, visible)[0] for person in centres]).astype(np.float64)


def median_ms(decode: Callable[[], object], repeats: int) -> float:
    decode()  # warm up: first-touch allocations, BLAS threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 sets of joints, 5 timing runs")
    parser.add_argument("--sigma", type=float, default=2.0, help="training sigma in heatmap px (COCO: 2)")
    parser.add_argument("--sets", type=int, default=2000, help="sets of 17 joints per noise level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sets, repeats = (200, 5) if args.quick else (args.sets, 20)
    sigma = args.sigma
    size = (WIDTH, HEIGHT)
    codecs = {rule: HeatmapCodec(size, size, sigma, post_process=rule) for rule in ("quarter", "dark")}

    def argmax(maps: np.ndarray) -> np.ndarray:
        x, y, _ = argmax_peaks(maps)
        return np.stack([x, y], axis=-1).astype(np.float64)

    decoders: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "argmax": argmax,
        "quarter": lambda maps: codecs["quarter"].decode(maps)[0],
        "DARK": lambda maps: codecs["dark"].decode(maps)[0],
        "DARK, paper's choices": lambda maps: paper_choices(maps, sigma),
    }
    rng = np.random.default_rng(args.seed)
    centres = rng.uniform((0, 0), (WIDTH - 1, HEIGHT - 1), size=(sets, JOINTS, 2))
    clean = render(codecs["quarter"], centres)
    margin = np.minimum.reduce(
        [centres[..., 0], centres[..., 1], WIDTH - 1 - centres[..., 0], HEIGHT - 1 - centres[..., 1]]
    )
    interior = margin >= 3 * sigma
    errors: dict[str, dict[float, np.ndarray]] = {name: {} for name in decoders}
    for noise in NOISES:
        maps = clean + noise * rng.standard_normal(clean.shape) if noise else clean
        for name, decode in decoders.items():
            errors[name][noise] = np.linalg.norm(decode(maps) - centres, axis=-1)  # (N, K)

    # (64, 17, H, W) float32, as a network outputs them
    timing_maps = (clean[:64] + 0.05 * rng.standard_normal(clean[:64].shape)).astype(np.float32)
    print(
        f"{sets} x {JOINTS} Gaussians, sigma {sigma:g}, on {HEIGHT}x{WIDTH} maps (height x width); "
        f"{interior.mean():.0%} of the centres are interior (>= 3 sigma from every edge); mean error "
        "in heatmap px, noise = per-pixel std (peak 1)\n"
    )
    header = [f"noise {n:g}" if n else "noiseless" for n in NOISES]
    header += ["noiseless, interior", f"noise {NOISES[-1]:g}, interior", "ms per 64 x 17 maps"]
    print("| decoding | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    for name, decode in decoders.items():
        cells = [f"{errors[name][noise].mean():.3f}" for noise in NOISES]
        cells += [f"{errors[name][noise][interior].mean():.3f}" for noise in (NOISES[0], NOISES[-1])]
        cells.append(f"{median_ms(lambda decode=decode: decode(timing_maps), repeats):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
