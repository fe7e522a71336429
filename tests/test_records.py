"""Person records as numpy columns (datasets/records.py) and the annotation index cache
(datasets/index_cache.py): the table gives back the dicts it was built from, and a cached
reading gives the records, category and bad-record lines that parsing gives."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import pickle
import shutil
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import metrics.coco
from datasets.base import DataError
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.index_cache import IndexCache, cache_dir
from datasets.mpii import MPIIDataset
from datasets.records import RecordTable, RecordTableBuilder
from datasets.validation import BadDataPolicy

INPUT, HEATMAP = (48, 64), (12, 16)
CODEC = HeatmapCodec(INPUT, HEATMAP, 1.0)
DETECTIONS = "test_coco_det_AP_H_56.json"


def assert_same_records(got, expected) -> None:
    """Same length, keys, value types and values (arrays: dtype, shape, values, NaN = NaN)."""
    got, expected = list(got), list(expected)
    assert len(got) == len(expected)
    for position, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert list(a) == list(b), position
        for key in b:
            assert type(a[key]) is type(b[key]), (position, key, type(a[key]), type(b[key]))
            if isinstance(b[key], np.ndarray):
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (position, key)
                np.testing.assert_array_equal(a[key], b[key])
            elif isinstance(b[key], float) and np.isnan(b[key]):
                assert np.isnan(a[key]), (position, key)
            else:
                assert a[key] == b[key], (position, key)


def example_records(count: int = 7) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        records.append(
            {
                "joints": rng.normal(size=(17, 2)).astype(np.float32),
                "visible": (rng.random(17) > 0.5).astype(np.float32),
                "center": rng.normal(size=2).astype(np.float32),
                "scale": float(rng.uniform(10, 500)),
                "head_size": float("nan") if i % 3 == 0 else float(i),
                "area": i if i % 2 else float(i) + 0.5,  # ints and floats mixed: stored as floats
                "image_id": 10**6 * i - 3,
                "big_id": 2**70 + i,  # JSON ints may exceed int64
                "path": f"images/{i // 2:06d}.jpg" if i != 4 else "images/caf\u00e9 \udcff.jpg",
                "image_size": None if i == 5 else (480 + i, 640),
            }
        )
    return records


def expected_value(value):
    """What the table gives back for a value it stored (ints of a float column become floats)."""
    return float(value) if isinstance(value, int) else value


# ---------------------------------------------------------------------------------------------
# RecordTable
# ---------------------------------------------------------------------------------------------


def test_table_gives_back_the_records_it_was_built_from():
    records = example_records()
    table = RecordTable.from_records(records)
    for record in records:
        record["area"] = expected_value(record["area"])
    assert len(table) == len(records) and table.keys == tuple(records[0])
    assert_same_records(table, records)
    assert_same_records([table[i] for i in range(-len(records), 0)], records)  # negative indices
    assert_same_records([table[np.int64(2)]], [records[2]])
    assert_same_records(table[2:6], records[2:6])  # a slice is a table sharing the arrays
    assert_same_records(table[::-3], records[::-3])
    assert isinstance(table[1:3], RecordTable)
    assert len(table[5:2]) == 0
    with pytest.raises(IndexError):
        table[len(records)]
    with pytest.raises(IndexError):
        table[-len(records) - 1]
    # the dict's arrays are copies: changing them leaves the table alone
    table[0]["joints"][:] = 1e6
    np.testing.assert_array_equal(table[0]["joints"], records[0]["joints"])
    np.testing.assert_array_equal(table.column("scale"), [r["scale"] for r in records])
    with pytest.raises(ValueError):
        table.column("joints")[0, 0, 0] = 0.0  # read-only view
    with pytest.raises(TypeError):
        table.column("path")


def test_table_survives_pickle_and_plain_arrays():
    records = example_records()
    table = RecordTable.from_records(records)
    assert_same_records(pickle.loads(pickle.dumps(table)), table)
    stream = io.BytesIO()
    np.savez(stream, **table.to_arrays())
    stream.seek(0)
    with np.load(stream, allow_pickle=False) as members:
        assert all(members[name].dtype != object for name in members.files)
        restored = RecordTable.from_arrays({name: members[name] for name in members.files})
    assert_same_records(restored, table)


def test_strings_are_stored_once_not_per_record():
    records = [{"path": f"/data/images/{i // 10:012d}.jpg"} for i in range(1000)]
    table = RecordTable.from_records(records)
    assert [r["path"] for r in table] == [r["path"] for r in records]
    # 100 distinct names of 29 bytes, plus a code per record and an offset per name
    assert table.nbytes == 100 * 29 + 1000 * 4 + 101 * 8


def test_builder_refuses_records_it_cannot_store():
    builder = RecordTableBuilder()
    builder.append({"joints": np.zeros((2, 2), np.float32), "id": 1})
    with pytest.raises(ValueError, match="keys"):
        builder.append({"joints": np.zeros((2, 2), np.float32)})
    builder.append({"joints": np.zeros((3, 2), np.float32), "id": 2})
    with pytest.raises(
        TypeError, match="'joints' holds an array of shape \\(3, 2\\), expected arrays of shape"
    ):
        builder.build()
    with pytest.raises(TypeError, match="'flag'"):
        RecordTable.from_records([{"flag": True}, {"flag": False}])
    with pytest.raises(TypeError, match="'size'"):
        RecordTable.from_records([{"size": (1, 2)}, {"size": (1, 2, 3)}])
    assert len(RecordTable.from_records([])) == 0


def test_damaged_table_arrays_are_a_value_error():
    arrays = RecordTable.from_records(example_records()).to_arrays()
    codes = next(name for name, a in arrays.items() if a.dtype == np.int32)
    for damage in ({codes: arrays[codes] + 1000}, {"c0_0": arrays["c0_0"][:2]}):
        with pytest.raises(ValueError):
            RecordTable.from_arrays(arrays | damage)


# ---------------------------------------------------------------------------------------------
# The index cache, on a copy of the COCO fixture
# ---------------------------------------------------------------------------------------------


def age(folder: Path, seconds_ago: float = 3600.0) -> None:
    """Files modified long enough ago to be cached (a just-written file is not, see RACY_SECONDS)."""
    when = time.time() - seconds_ago
    for path in folder.iterdir():
        os.utime(path, (when, when))


@pytest.fixture
def coco(shared_data, tmp_path) -> Path:
    folder = tmp_path / "coco"
    shutil.copytree(shared_data / "coco_mini", folder, copy_function=shutil.copyfile)
    os.chmod(folder, 0o755)
    age(folder)
    return folder


def build(folder: Path, **kwargs) -> COCODataset:
    return COCODataset(folder, "val2017", CODEC, INPUT, annotation_file="test_coco.json", **kwargs)


def entries(index_cache_in_tmp: Path) -> list[Path]:
    return sorted((index_cache_in_tmp / "index").glob("*.npz"))


@contextlib.contextmanager
def refuse_parsing(monkeypatch) -> Iterator[None]:
    """Parsing the annotation file fails the test (inside the ``with``): records must come from
    the cache. Its own patch, so leaving it keeps the fixture's POSE_CACHE_DIR."""
    with monkeypatch.context() as patch:
        patch.setattr(metrics.coco, "load_gt", lambda *a, **k: pytest.fail("parsed again"))
        yield


def test_cached_records_equal_parsed_records(coco, index_cache_in_tmp, monkeypatch):
    parsed = build(coco)
    parsed_detections = build(coco, bbox_file=DETECTIONS, det_score_threshold=0.3)
    assert len(entries(index_cache_in_tmp)) == 2
    with refuse_parsing(monkeypatch):
        cached = build(coco)
        cached_detections = build(coco, bbox_file=DETECTIONS, det_score_threshold=0.3)
    assert len(cached) == 12 and "annotation_id" in cached.records[0]
    assert_same_records(cached.records, parsed.records)
    assert 0 < len(cached_detections) < 118 and cached_detections.records[0]["detection"] == 0
    assert_same_records(cached_detections.records, parsed_detections.records)
    assert cached.category_id == parsed.category_id == 1
    assert cached.describe(3) == parsed.describe(3)
    assert sorted(cached.coco.imgs) == sorted(parsed.coco.imgs)  # evaluation reloads the file


def test_other_options_are_other_entries(coco, index_cache_in_tmp):
    square = COCODataset(coco, "val2017", CODEC, (64, 64), annotation_file="test_coco.json")
    tall = build(coco)
    assert len(entries(index_cache_in_tmp)) == 2
    assert [r["scale"] for r in square.records] != [r["scale"] for r in tall.records]
    everyone = build(coco, skip_empty=False)
    assert len(everyone) > len(tall) and len(entries(index_cache_in_tmp)) == 3
    assert_same_records(build(coco).records, tall.records)


def test_parsed_json_is_freed_after_indexing(coco, monkeypatch):
    annotation = coco / "test_coco.json"
    content = json.loads(annotation.read_text())
    content["images"][0]["marker of test_records"] = [1]  # a list, so gc tracks the dict holding it
    annotation.write_text(json.dumps(content))
    del content
    parsed = []
    load_gt = metrics.coco.load_gt

    def watched(*args, **kwargs):
        parsed.append(load_gt(*args, **kwargs))
        return parsed[-1]

    monkeypatch.setattr(metrics.coco, "load_gt", watched)
    for kwargs in ({}, {"bbox_file": DETECTIONS}):
        dataset = build(coco, **kwargs)
        assert dataset._coco is None and isinstance(dataset.records, RecordTable)
    assert len(parsed) == 2
    objects = [weakref.ref(result) for result in parsed]
    parsed.clear()
    assert all(reference() is None for reference in objects)  # freed at once, without a gc pass
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is dict and "marker of test_records" in o]


def test_edited_file_is_parsed_again(coco, index_cache_in_tmp):
    first = build(coco)
    annotation = coco / "test_coco.json"
    content = json.loads(annotation.read_text())
    content["annotations"] = content["annotations"][1:]
    annotation.write_text(json.dumps(content))
    age(coco, 60.0)
    edited = build(coco)
    assert len(edited) == len(first) - 1
    assert_same_records(edited.records, first.records[1:])
    assert len(entries(index_cache_in_tmp)) == 1  # the stale entry was replaced, not kept beside


def test_corrupt_or_foreign_entry_is_ignored_and_rewritten(coco, index_cache_in_tmp):
    parsed = build(coco)
    (entry,) = entries(index_cache_in_tmp)
    good = entry.read_bytes()
    for damage in (good[: len(good) // 2], b"not a zip file", b""):
        entry.write_bytes(damage)
        assert_same_records(build(coco).records, parsed.records)
        assert entry.read_bytes() == good  # rewritten whole
    # a readable entry holding an object array (pickle) is refused, not unpickled
    with open(entry, "wb") as stream:
        np.savez(stream, __key__=np.array([{"x": 1}], dtype=object))
    assert_same_records(build(coco).records, parsed.records)
    assert entry.read_bytes() == good


def test_bad_record_lines_come_back_from_the_cache(coco, monkeypatch):
    annotation = coco / "test_coco.json"
    content = json.loads(annotation.read_text())
    content["annotations"][1]["keypoints"][0] = "x"
    annotation.write_text(json.dumps(content))
    age(coco)
    skip = BadDataPolicy(skip=True, max_fraction=0.5)
    monkeypatch.setenv("POSE_INDEX_CACHE", "0")
    with pytest.raises(DataError) as parsed_error:
        build(coco)
    parsed = build(coco, policy=skip)
    assert len(parsed.dropped) == 1 and str(annotation) in parsed.dropped[0]
    monkeypatch.delenv("POSE_INDEX_CACHE")
    build(coco, policy=skip)  # writes the entry
    with refuse_parsing(monkeypatch):
        cached = build(coco, policy=skip)
        with pytest.raises(DataError) as cached_error:
            build(coco)
    assert cached.dropped == parsed.dropped
    assert_same_records(cached.records, parsed.records)
    assert str(cached_error.value) == str(parsed_error.value)


def test_no_entry_for_a_file_just_written_or_with_the_cache_off(coco, index_cache_in_tmp, monkeypatch):
    monkeypatch.setenv("POSE_INDEX_CACHE", "0")
    build(coco)
    assert entries(index_cache_in_tmp) == []
    monkeypatch.delenv("POSE_INDEX_CACHE")
    (coco / "test_coco.json").touch()  # modified just now: a same-size edit could follow unseen
    build(coco)
    assert entries(index_cache_in_tmp) == []


def test_unwritable_cache_is_a_note_not_an_error(coco, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("POSE_CACHE_DIR", str(blocker))
    assert len(build(coco)) == 12
    assert "note: could not write the annotation index cache" in capsys.readouterr().err


def test_entry_is_stale_when_the_reading_code_changes(tmp_path, index_cache_in_tmp):
    source, module = tmp_path / "annotations.json", tmp_path / "reader.py"
    source.write_text("{}")
    module.write_text("# version 1")
    age(tmp_path)
    table = RecordTable.from_records(example_records())
    IndexCache("annotations", [source], {"size": 1}, [module]).store(table, {"note": "kept"})
    records, extra = IndexCache("annotations", [source], {"size": 1}, [module]).load()
    assert_same_records(records, table)
    assert extra == {"note": "kept"}
    assert IndexCache("annotations", [source], {"size": 2}, [module]).load() is None  # other options
    module.write_text("# version 2")
    changed = IndexCache("annotations", [source], {"size": 1}, [module])
    assert changed.load() is None
    changed.store(table[:2], {})
    assert len(changed.load()[0]) == 2 and len(entries(index_cache_in_tmp)) == 1  # replaced


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("POSE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("POSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pose-estimation"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pose-estimation"
    monkeypatch.setenv("POSE_INDEX_CACHE", "0")
    assert cache_dir() is None


def test_mpii_records_are_a_table(shared_data):
    dataset = MPIIDataset(shared_data / "mpii_mini", "valid", CODEC, INPUT, annotation_file="valid_first5.h5")
    assert isinstance(dataset.records, RecordTable) and len(dataset) == 5
    joints, missing, head_sizes = dataset.ground_truth()
    np.testing.assert_array_equal(joints, np.stack([r["joints"] for r in dataset.records]))
    np.testing.assert_array_equal(missing, np.stack([r["visible"] == 0 for r in dataset.records]))
    assert head_sizes.tolist() == [r["head_size"] for r in dataset.records]
    assert type(dataset.records[0]["image"]) is str and type(dataset.records[0]["image_id"]) is int
