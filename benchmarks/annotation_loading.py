"""Start-up time and memory of the COCO reader on a large keypoint file, and the memory that
DataLoader workers add while they read the records: the old layout (a dict per person) beside
the new one (datasets/records.py), in one run.

    python benchmarks/annotation_loading.py            # 150,000 persons, 20,000 samples
    python benchmarks/annotation_loading.py --quick    # 15,000 persons, 2,000 samples

A synthetic COCO-format file (images with sizes and URLs, persons with bbox, area, a polygon,
17 x 3 keypoints, iscrowd, num_keypoints) is written into a temporary folder, then every
measurement runs in a fresh process:

- start-up: building the training set's ``COCODataset`` with an empty index cache (the JSON is
  parsed and the cache written), then again with that cache, then with the cache off; RSS
  after the imports, peak RSS (``getrusage``), RSS after loading, and the dicts of the parsed
  JSON still alive after a ``gc.collect()``.
- records: the bytes of the RecordTable, and (tracemalloc) of the same records as a list of dicts,
  the layout the readers produced before.
- workers: the summed PSS (``/proc/<pid>/smaps_rollup``) of the DataLoader workers once each
  has delivered a batch, and after the given number of samples (COCO training augmentation,
  256x192 crops, 64x48 heatmaps). Images are a tiny blank picture, so the samples cost little
  and the figure is the records'. The old layout is emulated: the table turned into a list of
  dicts (``list(table)``), with the parsed JSON kept alive as the dataset used to keep it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ANNOTATION = "person_keypoints_bench.json"
INPUT_SIZE = (192, 256)  # (width, height)
COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
IMAGE_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (500, 375))  # (h, w)


# ---------------------------------------------------------------------------------------------
# The synthetic annotation file
# ---------------------------------------------------------------------------------------------


def write_annotations(folder: Path, persons: int, seed: int = 0) -> Path:
    """A COCO keypoint file with ``persons`` labelled persons (1 to 4 per image) in ``folder``,
    its first image as a file (the reader checks that one exists), dated an hour ago (the cache
    does not keep files modified in the last seconds)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    images, annotations = [], []
    person = 0
    while person < persons:
        image_id = len(images) + 1
        height, width = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        name = f"{image_id:012d}.jpg"
        images.append(
            {
                "license": int(rng.integers(1, 8)), "file_name": name,
                "coco_url": f"http://images.cocodataset.org/train2017/{name}", "height": height,
                "width": width, "date_captured": "2013-11-14 11:18:45",
                "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/{image_id}.jpg",
                "id": image_id,
            }
        )  # fmt: skip
        for _ in range(min(int(rng.integers(1, 5)), persons - person)):
            w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.2, 0.9) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            points = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17)], axis=1)
            flags = rng.choice([0, 1, 2], size=17, p=[0.3, 0.15, 0.55])
            flags[int(rng.integers(17))] = 2
            points[flags == 0] = 0
            keypoints = np.concatenate([np.round(points), flags[:, None]], axis=1).astype(int)
            angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            polygon = np.stack([x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], axis=1)
            annotations.append(
                {
                    "segmentation": [np.round(polygon, 2).reshape(-1).tolist()],
                    "num_keypoints": int((flags > 0).sum()), "area": round(0.6 * w * h, 4), "iscrowd": 0,
                    "keypoints": keypoints.reshape(-1).tolist(), "image_id": image_id,
                    "bbox": [round(v, 2) for v in (x, y, w, h)], "category_id": 1, "id": 900000 + person,
                }
            )  # fmt: skip
            person += 1
    category = {
        "supercategory": "person", "id": 1, "name": "person", "keypoints": COCO_KEYPOINTS,
        "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7]],
    }  # fmt: skip
    content = {
        "info": {"description": "synthetic benchmark file"}, "licenses": [], "images": images,
        "annotations": annotations, "categories": [category],
    }  # fmt: skip
    path = folder / ANNOTATION
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(content, stream)
    first = images[0]
    cv2.imwrite(str(folder / first["file_name"]), np.zeros((first["height"], first["width"], 3), np.uint8))
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


# ---------------------------------------------------------------------------------------------
# Measurements, each in a fresh process (python annotation_loading.py --child MODE FOLDER)
# ---------------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as stream:
        line = next(line for line in stream if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, PSS in shared memory) of a process: its share of every page it maps, and of those
    in shared memory (a DataLoader worker's batches on their way to the main process, whose
    number in flight varies)."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as stream:
        for line in stream:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Pss_Shmem"):
                values[key] = int(rest.split()[0]) / 1024
    return values["Pss"], values.get("Pss_Shmem", float("nan"))  # Pss_Shmem: Linux 5.14+


def summed_mb(pids: list[int]) -> tuple[float, float]:
    pss, shmem = zip(*(memory_mb(pid) for pid in pids), strict=True)
    return sum(pss), sum(shmem)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def json_dicts_alive() -> int:
    """Annotation and image dicts of a parsed COCO file still reachable."""
    import gc

    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if type(o) is dict and (("keypoints" in o and "bbox" in o) or ("file_name" in o and "coco_url" in o))
    )


def build_dataset(folder: Path, blank: bool = False):
    """The training set's COCODataset (COCO training augmentation); with ``blank``, every image
    is a tiny blank picture, so a sample costs little besides its record."""
    import numpy as np

    from datasets import Augmentation
    from datasets.coco import COCODataset
    from datasets.codecs import make_codec

    class BlankImages(COCODataset):
        checks_image_bounds = False
        picture = np.zeros((16, 16, 3), dtype=np.uint8)

        def load_image(self, record):
            return self.picture

        if hasattr(COCODataset, "load_decoded"):  # the pipeline's reduced-size decoding, if present

            def load_decoded(self, record, zoom):
                from datasets.base import DecodedImage

                return DecodedImage(self.picture, 1.0, self.picture.shape[:2])

    kind = BlankImages if blank else COCODataset
    augmentation = Augmentation(
        max_scale=0.35, max_rotate=45, rotate_prob=0.6, flip_prob=0.5, color_jitter=0.2
    )
    codec = make_codec("heatmap", INPUT_SIZE, (INPUT_SIZE[0] // 4, INPUT_SIZE[1] // 4), 2.0)
    return kind(
        folder, "train2017", codec, INPUT_SIZE, augmentation, annotation_file=ANNOTATION, image_dir=".",
        half_body_prob=0.3,
    )  # fmt: skip


def child_start(folder: Path) -> dict:
    started = time.perf_counter()
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import datasets.coco  # noqa: F401

    imported, after_imports = time.perf_counter(), rss_mb()
    dataset = build_dataset(folder)
    loaded = time.perf_counter()
    return {
        "imports_s": imported - started, "load_s": loaded - imported, "rss_imports": after_imports,
        "peak_rss": peak_rss_mb(), "rss_loaded": rss_mb(), "records": len(dataset),
        "json_dicts": json_dicts_alive(), "table_mb": dataset.records.nbytes / 1e6,
    }  # fmt: skip


def child_sizes(folder: Path) -> dict:
    import tracemalloc

    dataset = build_dataset(folder)
    tracemalloc.start()
    records = list(dataset.records)
    dicts_mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return {"table_mb": dataset.records.nbytes / 1e6, "dicts_mb": dicts_mb, "records": len(records)}


def child_workers(folder: Path, layout: str, samples: int, workers: int) -> dict:
    import gc

    import torch

    from datasets.loading import GuardedDataLoader

    dataset = build_dataset(folder, blank=True)
    if layout != "table":
        dataset.records = list(dataset.records)  # a dict per person, as the readers gave before
        if layout == "dicts+json":
            dataset._coco = dataset.coco  # and the parsed file kept, as the dataset kept it
        gc.collect()  # the old records were old objects, made during a long parse
    batch = 32
    loader = GuardedDataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    iterator = iter(loader)
    pids = [worker.pid for worker in iterator.iterator._workers]
    seen = 0
    for _ in range(workers):  # one batch from each worker: they are up and running
        seen += len(next(iterator)["target"])
    pss_start, shmem_start = summed_mb(pids)
    while seen < samples:
        seen += len(next(iterator)["target"])
    pss_after, shmem_after = summed_mb(pids)
    result = {
        "pss_start": pss_start, "pss_after": pss_after,
        "growth_without_batches": (pss_after - shmem_after) - (pss_start - shmem_start),
        "samples": seen, "main_pss": memory_mb(os.getpid())[0],
    }  # fmt: skip
    iterator.close()
    return result


def run_child(args: list[str], cache: Path, cache_on: bool = True) -> dict:
    environment = os.environ | {"POSE_CACHE_DIR": str(cache), "POSE_INDEX_CACHE": "1" if cache_on else "0"}
    environment["PYTHONWARNINGS"] = "ignore::UserWarning"  # 4 workers on 2 cores: torch's advice
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO_ROOT,
        env=environment,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15,000 persons and 2,000 samples")
    parser.add_argument("--persons", type=int, help="persons in the file (default 150,000)")
    parser.add_argument("--samples", type=int, help="samples the workers load (default 20,000)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    if args.child:
        mode, folder = args.child[0], Path(args.child[1])
        if mode == "start":
            result = child_start(folder)
        elif mode == "sizes":
            result = child_sizes(folder)
        else:
            result = child_workers(folder, args.child[2], int(args.child[3]), int(args.child[4]))
        print(json.dumps(result))
        return

    persons = args.persons or (15_000 if args.quick else 150_000)
    samples = args.samples or (2_000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory(prefix="annotation-loading-") as temporary:
        folder, cache = Path(temporary) / "data", Path(temporary) / "cache"
        folder.mkdir()
        started = time.perf_counter()
        path = write_annotations(folder, persons)
        size_mb, took = path.stat().st_size / 1e6, time.perf_counter() - started
        print(
            f"Synthetic COCO keypoint file: {persons:,} persons, {size_mb:.0f} MB of JSON (written in "
            f"{took:.0f} s); {os.cpu_count()} CPU cores.\n"
        )
        cold = run_child(["start", str(folder)], cache)
        warm = run_child(["start", str(folder)], cache)
        off = run_child(["start", str(folder)], cache, cache_on=False)
        print("| start of a process building the training set | annotation loading (s) | imports (s) "
              "| RSS after imports (MB) | peak RSS (MB) | RSS after loading (MB) | parsed-JSON dicts alive |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for label, row in (
            ("first start: parse, write the index cache", cold),
            ("later start: index cache", warm),
            ("index cache off (`POSE_INDEX_CACHE=0`)", off),
        ):
            print(
                f"| {label} | {row['load_s']:.2f} | {row['imports_s']:.2f} | {row['rss_imports']:.0f} "
                f"| {row['peak_rss']:.0f} | {row['rss_loaded']:.0f} | {row['json_dicts']} |"
            )

        sizes = run_child(["sizes", str(folder)], cache)
        print(f"\n| {sizes['records']:,} person records | MB |\n| --- | --- |")
        print(f"| a dict per person (before; tracemalloc) | {sizes['dicts_mb']:.0f} |")
        print(f"| RecordTable (numpy columns) | {sizes['table_mb']:.1f} |")

        print(
            f"\n| {args.workers} DataLoader workers, {samples:,} samples (batch 32) | summed PSS at start "
            "(MB) | after (MB) | growth (MB) | growth without batches in shared memory (MB) | main process PSS (MB) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for layout, label in (
            ("dicts+json", "a dict per person, parsed JSON kept (before)"),
            ("dicts", "a dict per person, parsed JSON freed"),
            ("table", "RecordTable, parsed JSON freed (now)"),
        ):
            row = run_child(["workers", str(folder), layout, str(samples), str(args.workers)], cache)
            growth = row["pss_after"] - row["pss_start"]
            print(
                f"| {label} | {row['pss_start']:.0f} | {row['pss_after']:.0f} | {growth:.0f} "
                f"| {row['growth_without_batches']:.0f} | {row['main_pss']:.0f} |"
            )


if __name__ == "__main__":
    main()
