"""Training throughput of the demo configuration on this machine, by torch threads x DataLoader
workers, and the data pipeline alone.

    python benchmarks/training_throughput.py [--samples 640]

Prints a markdown table of milliseconds per training sample (lower is better).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

LOOP = """
import sys, time, tempfile, torch
sys.path.insert(0, {root!r})
import main as entry
with tempfile.TemporaryDirectory() as exp:
    start = time.perf_counter()
    entry.main(['--nEpochs', '1', '--syntheticTrain', '{samples}', '--syntheticVal', '16', '--nThreads', '{workers}',
                '--cpuThreads', '{threads}', '--expDir', exp, '--progress', 'none'])
    print((time.perf_counter() - start) / {samples} * 1000)
"""


def data_pipeline_ms(samples: int) -> float:
    sys.path.insert(0, str(REPO_ROOT))
    from datasets import Augmentation, SyntheticPeople, make_codec

    codec = make_codec("heatmap", (128, 128), (32, 32), 1.0)
    data = SyntheticPeople(
        "train", samples, codec, (128, 128), 160, Augmentation(0.25, 30, 0.6, 0.02, 0, 0.2)
    )
    start = time.perf_counter()
    for index in range(samples):
        data[index]
    return (time.perf_counter() - start) / samples * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=640)
    args = parser.parse_args()
    print(
        f"data pipeline alone (render + crop + augment + encode, one process): {data_pipeline_ms(args.samples):.2f} ms/sample\n"
    )
    print("| torch threads | DataLoader workers | ms / training sample |")
    print("| --- | --- | --- |")
    for threads, workers in ((1, 0), (2, 0), (1, 1), (2, 1), (2, 2)):
        code = LOOP.format(root=str(REPO_ROOT), threads=threads, workers=workers, samples=args.samples)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
        value = (
            result.stdout.strip().splitlines()[-1]
            if result.returncode == 0
            else f"failed: {result.stderr[-200:]}"
        )
        print(
            f"| {threads} | {workers} | {float(value):.1f} |"
            if result.returncode == 0
            else f"| {threads} | {workers} | {value} |"
        )


if __name__ == "__main__":
    main()
