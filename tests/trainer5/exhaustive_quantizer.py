"""funcopt's 8-bit quantizer against bitsandbytes' C routine on every float32 in [-1, 1].

``.venv5/bin/python tests/trainer5/exhaustive_quantizer.py`` (about 10 minutes on 2 cores; not
part of ``make test``, whose quantizer test probes every bin start and a ulp either side).
Each of the 2,130,706,433 float32 values in [-1, 1] is quantized as a scaled value (a block
whose absmax is 1.0, so bitsandbytes' ``x * (1 / absmax)`` is ``x``) by bitsandbytes'
``quantize_blockwise`` on CPU, by funcopt's jitted ``quantize_blocks`` and by the 255-threshold
model (``np.searchsorted``); prints the mismatch counts per map.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from bitsandbytes import functional as F

from funcopt import _quantize as q

CHUNK = 255 * (1 << 16)


def check(signed: bool) -> tuple[int, int, int]:
    code = F.create_dynamic_map(signed)
    assert np.array_equal(code.numpy(), q.dynamic_map(signed))
    t = q.thresholds(signed)[1:]
    quantize = jax.jit(q.quantize_blocks, static_argnums=1)
    first, last = int(q._ordered(np.float32(-1))), int(q._ordered(np.float32(1)))
    model_bad = funcopt_bad = total = 0
    for start in range(first, last + 1, CHUNK):
        v = q._unordered(np.arange(start, min(start + CHUNK, last + 1), dtype=np.int64))
        nb = -(-len(v) // 255)
        probes = np.zeros(nb * 255, np.float32)
        probes[:len(v)] = v
        blocks = np.concatenate([np.ones((nb, 1), np.float32), probes.reshape(nb, 255)], 1)
        out, absmax = torch.ops.bitsandbytes.quantize_blockwise(torch.from_numpy(blocks), code,
                                                                256)
        assert np.all(absmax.numpy() == 1.0)
        theirs = out.numpy()[:, 1:].reshape(-1)[:len(v)]
        ours = np.asarray(quantize(jnp.asarray(blocks), signed)[0])[:, 1:].reshape(-1)[:len(v)]
        model_bad += int(np.sum(theirs != np.searchsorted(t, v, side="right")))
        funcopt_bad += int(np.sum(theirs != ours))
        total += len(v)
    return total, model_bad, funcopt_bad


def main():
    for signed in (True, False):
        start = time.time()
        total, model_bad, funcopt_bad = check(signed)
        print(f"{'signed' if signed else 'unsigned'} map: {total} values, mismatches: "
              f"funcopt {funcopt_bad}, threshold model {model_bad} ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
