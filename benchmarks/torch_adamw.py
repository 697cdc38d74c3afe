"""Step time of funcopt.torch.AdamW against torch.optim.AdamW(fused=True) and
transformers.AdamW: the ``adamw`` group of :mod:`benchmarks.torch_bridge` (which times every
funcopt.torch optimizer against its reference).

``python -m benchmarks.torch_adamw [--rounds 30] [--budget 60]``
"""

from __future__ import annotations

import sys

from benchmarks import torch_bridge


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return torch_bridge.main(["--only", "adamw", *argv])


if __name__ == "__main__":
    main()
