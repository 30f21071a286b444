"""Two ranks check that they see one run directory; rank 1 is given a directory of its own, as a node
whose output directory is local would see it. Prints `RESULT {json}` per rank.

usage: shared_dir.py SHARED_DIR LOCAL_DIR
"""

import json
import sys
from pathlib import Path

from dist_lacl import distributed as dist
from dist_lacl.errors import UserError
from dist_lacl.outputs import FolderLock
from dist_lacl.run_dir import check_shared_run_dir


def main():
    shared, local = map(Path, sys.argv[1:3])
    dist.init_process_group(60, backend="gloo")
    token = None
    if dist.is_main():
        shared.mkdir(parents=True, exist_ok=True)
        token = FolderLock(shared, "train.output_dir", "training").token
    token = dist.broadcast_object(token)
    seen_as = shared if dist.rank() == 0 else local
    try:
        check_shared_run_dir(seen_as, token, wait_s=2)
        outcome = "ok"
    except UserError as e:
        outcome = str(e)
    print("RESULT " + json.dumps({"rank": dist.rank(), "outcome": outcome}), flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
