"""The demo's training steps on a CPU that other work is also using: default settings against
``OMP_NUM_THREADS=1``, next to busy processes, in one run.

    python benchmarks/shared_cpu.py [--steps 20] [--busy 2] [--rounds 2] [--env NAME=VALUE ...]

Each setting trains ``--steps`` demo batches (python main.py's configuration, 16 samples a batch)
in a fresh process while ``--busy`` processes spin on the CPU, the settings taking turns for
``--rounds`` rounds (the median is shown); then the same without the busy processes. Prints a
markdown table of seconds per step. The time counted is the training epoch's, from its first batch
to its last: the process start, torch's import and the model's build are not counted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# a child: the demo's options, one epoch of `steps` batches, timed from the first batch to the last
CHILD = """
import sys, tempfile, time
sys.path.insert(0, {root!r})
import engine
from utils.options import parse_options
import train

first = []
original = engine.train_one_epoch

def timed(*args, **kwargs):
    on_step = kwargs["on_step"]
    def step(*a):
        first.append(time.perf_counter())
        if on_step is not None:
            on_step(*a)
    kwargs["on_step"] = step
    return original(*args, **kwargs)

train.train_one_epoch = timed
with tempfile.TemporaryDirectory() as exp:
    opts = parse_options(["--nEpochs", "1", "--syntheticTrain", str({steps} * 16), "--syntheticVal", "16",
                          "--expDir", exp, "--progress", "none", "--tensorboard", "0", *{extra!r}])
    train.run(opts)
print("SECONDS_PER_STEP", (first[-1] - first[0]) / (len(first) - 1))
"""


def spin() -> None:
    while True:
        pass


def seconds_per_step(steps: int, env: dict[str, str], extra: list[str]) -> float:
    code = CHILD.format(root=str(REPO_ROOT), steps=steps, extra=extra)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **env}
    )
    for line in result.stdout.splitlines():
        if line.startswith("SECONDS_PER_STEP"):
            return float(line.split()[1])
    raise RuntimeError(f"the child failed: {result.stderr[-400:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="demo training steps per measurement")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the training")
    parser.add_argument("--rounds", type=int, default=2, help="turns each setting takes (median shown)")
    parser.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="an environment to compare (repeatable; 'default' is the environment as it is; "
        "default: default and OMP_NUM_THREADS=1)",
    )
    parser.add_argument("extra", nargs="*", help="main.py options for every setting (after --)")
    args = parser.parse_args()
    settings = args.setting or ["default", "OMP_NUM_THREADS=1"]
    environments = {
        name: {} if name == "default" else dict(pair.split("=", 1) for pair in name.split(","))
        for name in settings
    }
    cores = len(os.sched_getaffinity(0))
    print(
        f"{cores} CPU cores, load average {os.getloadavg()[0]:.1f} at the start; {args.steps} demo training "
        f"steps (batch 16) per measurement, median of {args.rounds} rounds; main.py options: "
        f"{' '.join(args.extra) or 'none'}\n"
    )
    results: dict[tuple[str, int], float] = {}
    for busy in (args.busy, 0):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            times: dict[str, list[float]] = {name: [] for name in environments}
            for _ in range(args.rounds):
                for name, env in environments.items():
                    times[name].append(seconds_per_step(args.steps, env, args.extra))
            for name in environments:
                results[(name, busy)] = statistics.median(times[name])
        finally:
            for process in spinners:
                process.terminate()
                process.join()
        time.sleep(1)
    reference = settings[-1]
    print(
        f"| setting | s / step, {args.busy} busy processes | vs {reference} | s / step, idle | vs {reference} |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in environments:
        loaded, idle = results[(name, args.busy)], results[(name, 0)]
        print(
            f"| {name} | {loaded:.3f} | {loaded / results[(reference, args.busy)]:.2f}x | {idle:.3f} | "
            f"{idle / results[(reference, 0)]:.2f}x |"
        )


if __name__ == "__main__":
    main()
