"""Train or evaluate a pose model.

python main.py                                  # demo: synthetic people, small hourglass, CPU
python main.py -DataConfig conf/datasets/mpii.defconf -ModelConfig conf/models/StackedHourGlass.defconf
python main.py --loadModel exp/run/last.pth      # resume that run
python main.py -test --loadModel exp/run/best.pth
python main.py ... --browse 16                   # look at augmented training samples
torchrun --nproc_per_node 4 main.py ...          # DistributedDataParallel

This file only reads the options and hands them to the mode's module, so ``--help`` and option
errors answer before torch is imported.
"""

from __future__ import annotations

import errno
import importlib
import sys

from modes import mode_of
from utils.options import parse_options


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    # the mode's module imports torch, the models and the datasets, once the options are known
    return importlib.import_module(mode_of(opts).module).run(opts)


def one_line(error: Exception) -> str:
    """The error's own message; a DataLoader worker wraps it in a traceback whose last line it is."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


# a write that failed for want of room or permission: one line naming the file, not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def cli() -> int:
    clean = False  # every rank ended the same way: they may meet once more to leave the group
    try:
        status = main()
        clean = True
        return status
    except Exception as error:
        from datasets.base import DataError
        from engine import NonFiniteLossError
        from utils.checkpoint import CheckpointError, CheckpointWriteError
        from utils.distributed import DeviceSetupError, PeerLostError

        if isinstance(error, (DataError, CheckpointError, DeviceSetupError)):
            print(f"main.py: error: {one_line(error)}", file=sys.stderr)
            return 2
        loading = sys.modules.get("datasets.loading")  # a DataLoader worker died or hung: name its sample
        failure = loading.loader_failure(error) if loading else None
        if failure:
            print(f"main.py: error: {failure}", file=sys.stderr)
            return 2
        if isinstance(error, PeerLostError):
            if str(error):  # rank 0 speaks for the run
                print(f"main.py: error: {error}", file=sys.stderr)
            return 1
        if isinstance(error, (NonFiniteLossError, CheckpointWriteError)):
            print(f"main.py: error: {error}", file=sys.stderr)
            return 1
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            print(
                f"main.py: error: cannot write {error.filename or 'a file'}: {error.strerror}",
                file=sys.stderr,
            )
            return 1
        raise
    finally:
        if "utils.distributed" in sys.modules:
            sys.modules["utils.distributed"].cleanup_distributed(clean)


if __name__ == "__main__":
    sys.exit(cli())
