"""Dataset images are read as stored, whatever their EXIF orientation tag says.

COCO and MPII annotations (and COCO's width/height) refer to the stored bitmap. A JPEG tagged
"rotate 90" is what a viewer shows turned, but its labels sit on the stored pixels, so the
readers must ignore the tag; and a decoded size that disagrees with the annotation is an error
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.base import Augmentation, DataError, read_image
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.skeletons import COCO_JOINTS

ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF: the stored image must be turned 90 degrees clockwise to display it
STORED_W, STORED_H = 96, 48
SQUARE = (60, 12, 76, 28)  # x0, y0, x1, y1 of a white square in stored pixels (exclusive ends)


def write_tagged_jpeg(path: Path) -> None:
    """A 96x48 (w x h) dark JPEG with a white square at ``SQUARE``, tagged orientation 6."""
    pixels = np.full((STORED_H, STORED_W, 3), 30, dtype=np.uint8)
    x0, y0, x1, y1 = SQUARE
    pixels[y0:y1, x0:x1] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90_CW
    Image.fromarray(pixels).save(path, quality=100, exif=exif)


def write_coco(folder: Path, width: int = STORED_W, height: int = STORED_H) -> Path:
    """One image, one person whose every keypoint is the square's centre, in stored pixels."""
    cx, cy = (SQUARE[0] + SQUARE[2] - 1) / 2, (SQUARE[1] + SQUARE[3] - 1) / 2
    keypoints = [cx, cy, 2] * COCO_JOINTS.num_joints
    coco = {
        "images": [{"id": 1, "file_name": "tagged.jpg", "width": width, "height": height}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 256.0,
                "bbox": [SQUARE[0] - 8, SQUARE[1] - 8, 32, 32],
                "keypoints": keypoints,
                "num_keypoints": COCO_JOINTS.num_joints,
            }
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_JOINTS.names), "skeleton": []}],
    }
    path = folder / "tagged.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def tagged_dir(tmp_path: Path) -> Path:
    write_tagged_jpeg(tmp_path / "tagged.jpg")
    return tmp_path


def test_the_tag_is_real_and_read_image_ignores_it(tagged_dir: Path) -> None:
    # OpenCV's default applies the tag: the displayed image is 48 wide and 96 tall
    assert cv2.imread(str(tagged_dir / "tagged.jpg")).shape[:2] == (STORED_W, STORED_H)
    stored = read_image(tagged_dir / "tagged.jpg")
    assert stored.shape[:2] == (STORED_H, STORED_W)
    x0, y0, x1, y1 = SQUARE
    assert stored[y0:y1, x0:x1].mean() > 250 and stored[:, :40].mean() < 40
    assert read_image(tagged_dir / "tagged.jpg", upright=True).shape[:2] == (STORED_W, STORED_H)


def test_coco_reader_crops_the_stored_pixels_under_the_labels(tagged_dir: Path) -> None:
    annotation = write_coco(tagged_dir)
    codec = HeatmapCodec((32, 32), (8, 8), 1.0)
    dataset = COCODataset(
        tagged_dir, "val2017", codec, (32, 32), Augmentation(), annotation_file=annotation.name
    )
    sample = dataset[0]
    # the labelled point (crop centre) must be on the white square
    image = sample["image"].numpy().transpose(1, 2, 0) / 255.0
    assert image[14:18, 14:18].mean() > 0.95
    assert sample["target_weight"].numpy().all()


def test_coco_reader_refuses_an_image_whose_size_disagrees(tagged_dir: Path) -> None:
    # an annotation written for another version of the file (here 96 x 96)
    annotation = write_coco(tagged_dir, width=STORED_W, height=STORED_W)
    codec = HeatmapCodec((32, 32), (8, 8), 1.0)
    dataset = COCODataset(
        tagged_dir, "val2017", codec, (32, 32), Augmentation(), annotation_file=annotation.name
    )
    with pytest.raises(DataError) as error:
        dataset[0]
    message = str(error.value)
    assert "\n" not in message and "tagged.jpg" in message and "96x48" in message and "96x96" in message
