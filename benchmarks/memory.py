"""Peak resident-set growth of one optimizer's init + 3 steps, in a process of its own.

``python -m benchmarks.memory --peer funcopt.adamw --size 25m`` prints one JSON line. Run by
:mod:`benchmarks.update_step`; a fresh process keeps allocator reuse from other optimizers out
of the figure.
"""

import argparse
import json

from benchmarks.update_step import PEERS, SIZES, measure_memory


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", choices=sorted(PEERS), required=True)
    ap.add_argument("--size", choices=sorted(SIZES), default="25m")
    args = ap.parse_args()
    print(json.dumps(measure_memory(args.peer, args.size)))


if __name__ == "__main__":
    main()
