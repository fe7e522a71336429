"""The original project's spellings and keys, translated at the edge: its config files and
commands keep working, and nothing past :func:`translate` sees them.

- ``worldCoors`` and ``headSize`` (MPII head sizes now come from the annotations) are accepted
  and ignored with a notice;
- ``visdom`` maps onto ``--tensorboard``;
- ``TargetType: direct`` is the regression target type;
- ``-DEBUG`` is batch 1, no shuffle, no workers;
- boolean keys written as 0 and 1 (``_flag`` in utils/options.py reads both).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from utils.option_errors import config_file_of, typed_on_command_line

RETIRED_KEYS = {
    "worldCoors": "MPII head sizes now come from the annotations",
    "headSize": "MPII head sizes now come from the annotations",
}
TARGET_TYPE_SPELLINGS = {"heatmap": "heatmap", "direct": "regression", "regression": "regression"}


def translate(parser: Any, opts: argparse.Namespace) -> None:
    """Turn the original project's keys into this project's, with a notice for each retired key."""
    for key, reason in RETIRED_KEYS.items():
        if getattr(opts, key) is not None:
            print(f"note: option {key} is ignored ({reason})", file=sys.stderr)
    apply_visdom(parser, opts)
    if opts.DEBUG:
        opts.data_loader_size, opts.shuffle, opts.nThreads = 1, False, 0


def target_type_spelled(value: str | None) -> str | None:
    """``TargetType`` as this project names it ("heatmap" or "regression"); None when absent;
    "?" for a value the original project did not have either."""
    if value is None:
        return None
    return TARGET_TYPE_SPELLINGS.get(str(value).lower(), "?")


def apply_visdom(parser: Any, opts: argparse.Namespace) -> None:
    """Map the original project's ``visdom`` key onto ``--tensorboard``, with a notice.

    ``visdom: 1`` asked for live plots, so it turns TensorBoard on, unless ``tensorboard`` is
    itself given (command line or config file), which wins. ``visdom: 0`` changes nothing:
    TensorBoard stays as ``--tensorboard`` says (on by default), because the original configs
    all carry ``visdom: 0`` and would otherwise turn it off everywhere."""
    if opts.visdom is None:
        return
    typed = parser._typed or []
    explicit = config_file_of(parser, "tensorboard", typed) is not None or typed_on_command_line(
        "tensorboard", typed
    )
    if not opts.visdom:
        note = "visdom: 0 leaves TensorBoard as --tensorboard sets it: " + (
            "on (--tensorboard 0 turns it off)" if opts.tensorboard else "off"
        )
        print(f"note: option visdom is ignored ({note})", file=sys.stderr)
    elif explicit and not opts.tensorboard:
        print(
            "note: option visdom is replaced by --tensorboard, which is given as 0 and wins", file=sys.stderr
        )
    else:
        opts.tensorboard = True
        print(
            "note: option visdom is replaced by --tensorboard; visdom: 1 turns TensorBoard on "
            "(events in <run>/tb: tensorboard --logdir <expDir>)",
            file=sys.stderr,
        )


#####RETIRED
