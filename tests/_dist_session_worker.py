"""Run under torchrun by tests/test_distributed.py: what ``distributed_session`` leaves behind.

``python -m tests._dist_session_worker OUT MODE`` writes ``OUT.<rank>.json``: whether the group was
live inside the session, after a session nested in it (which must not leave the outer one), and after
the session, whose block ends normally (MODE ``ok``) or raises (MODE ``error``). A group can be joined
once per torchrun process, hence one session per run.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from ovss.distributed import all_reduce_sum, distributed_session


def main(out: str, mode: str) -> None:
    seen: dict[str, object] = {}
    try:
        with distributed_session("cpu") as info:
            seen["inside"] = dist.is_initialized() and dist.get_world_size() == info.world_size == 2
            seen["sum"] = all_reduce_sum(info.rank + 1)
            with distributed_session("cpu"):
                pass
            seen["nested_keeps_outer"] = dist.is_initialized()
            if mode == "error":
                raise KeyboardInterrupt  # any error, even one that is not an Exception
    except KeyboardInterrupt:
        seen["raised"] = True
    seen["after"] = dist.is_initialized()
    with open(f"{out}.{info.rank}.json", "w", encoding="utf-8") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
