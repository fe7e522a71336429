"""Run main.py counting the torch.distributed collectives that the project's own code calls.

    torchrun --nproc_per_node 2 tests/collective_counter.py OUT_DIR [main.py options]

Each rank writes ``OUT_DIR/rank<R>.json``: {function name: calls}. Calls made inside PyTorch
(DistributedDataParallel's gradient all-reduce, its construction) are not counted: they are the
library's, and the same for any program.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[1]
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
    "broadcast_object_list", "barrier", "reduce", "gather", "gather_object", "scatter",
    "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
)  # fmt: skip
counts: dict[str, int] = {}


def counting(name: str):
    real = getattr(dist, name)

    def counted(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(str(REPO_ROOT)) and "site-packages" not in caller:
            counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    return counted


def main() -> int:
    out_dir = Path(sys.argv[1])
    for name in COLLECTIVES:
        setattr(dist, name, counting(name))
    sys.path.insert(0, str(REPO_ROOT))
    sys.argv = ["main.py", *sys.argv[2:]]
    import main as entry

    try:
        return entry.cli()
    finally:
        (out_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    sys.exit(main())
