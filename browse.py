"""--browse N: write N augmented training samples as PNG (crops with their skeletons), to look at
what training sees before spending hours on it.

    python main.py -DataConfig conf/datasets/mpii.defconf --dataDir /data/mpii --browse 16
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from build import build_run
from checkpoints import make_run_dir, read_weights
from utils.drawing import browse_samples

if TYPE_CHECKING:
    from utils.options import Options


def run(opts: Options) -> int:
    parts = build_run(opts, with_train=True)
    epoch = 1
    if opts.loadModel:  # the epoch a resume would train picks the augmentation drawn
        read = read_weights(parts.model, opts)
        epoch = read.next_epoch
        for note in (
            *read.notes,
            f"the augmentation of epoch {epoch}, which {opts.loadModel} would train next",
        ):
            parts.say(note)
    run_dir = make_run_dir(opts, parts.context.is_main)
    if parts.context.is_main:
        parts.train_set.set_epoch(epoch)
        paths = browse_samples(parts.train_set, parts.codec, opts.browse, run_dir / "browse")
        parts.say(f"wrote {len(paths)} augmented training samples to {run_dir / 'browse'}")
    return 0
