"""--browse N: write N augmented training samples as PNG (crops with their skeletons), to look at
what training sees before spending hours on it.

    python main.py -DataConfig conf/datasets/mpii.defconf --dataDir /data/mpii --browse 16
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from build import build_run
from checkpoints import Resumed, TrainingCheckpoint, make_run_dir
from utils.drawing import browse_samples

if TYPE_CHECKING:
    from utils.options import Options


def run(opts: Options) -> int:
    parts = build_run(opts, with_train=True)
    resumed = Resumed()
    if opts.loadModel:  # the checkpoint's epoch picks the augmentation drawn
        resumed = TrainingCheckpoint(parts.model, None, None, None, opts, parts.context).restore()
    for note in resumed.notes:
        parts.say(note)
    run_dir = make_run_dir(opts, parts.context.is_main)
    if parts.context.is_main:
        parts.train_set.set_epoch(resumed.start_epoch)
        paths = browse_samples(parts.train_set, parts.codec, opts.browse, run_dir / "browse")
        parts.say(f"wrote {len(paths)} augmented training samples to {run_dir / 'browse'}")
    return 0
