"""funcopt across processes with ``jax.distributed``: a two-"host" run on one machine.

``python -m benchmarks.multihost`` starts 2 processes with 4 CPU devices each (gloo
collectives over localhost), builds one ("data", "model") = (2, 4) mesh over the 8 global
devices, shards a small GPT-2-like pytree over it, and runs 3 donated steps of funcopt.adamw
and funcopt.adafactor with the state sharded like the parameters. Each process checks its
own shards against a single-process, single-device run of the same steps and prints one line;
the launcher exits non-zero if any process disagrees. On real hosts the worker code is the
same: call ``jax.distributed.initialize(coordinator, num_processes, process_id)`` (or with no
arguments under SLURM / Cloud TPU, which it detects) before anything else touches JAX.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

SPECS = {  # parameter name -> (shape, PartitionSpec entries over ("data", "model"))
    "wte": ((64, 32), ("model", None)),
    "c_attn": ((32, 96), ("data", "model")),
    "c_fc": ((32, 128), ("data", "model")),
    "bias": ((128,), ("model",)),
    "ln": ((32,), ()),
}


def _numbers():
    import numpy as np

    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SPECS.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SPECS.items()}
             for _ in range(3)]
    return params, grads


def _optimizers():
    import funcopt

    return {"adamw": funcopt.adamw(1e-2, weight_decay=0.1), "adafactor": funcopt.adafactor()}


def _step(opt):
    import optax

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return step




def worker(process_id: int, num_processes: int, port: int):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 4)
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((2, 4), ("data", "model"))  # over all 8 global devices
    params_np, grads_np = _numbers()

    def shard(tree):
        # Each process contributes the slices its own devices hold (here every process has
        # the full arrays; a real input pipeline would load only its part).
        out = {}
        for k, x in tree.items():
            sharding = NamedSharding(mesh, P(*SPECS[k][1]))
            out[k] = jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])
        return out

    import funcopt

    failures = []
    for name, opt in _optimizers().items():
        # Reference: the same steps on one local device, outside the mesh.
        one = jax.local_devices()[0]
        ref_p = jax.device_put(params_np, one)
        ref_s = jax.jit(opt.init)(ref_p)
        ref_step = jax.jit(_step(opt))
        for g in grads_np:
            ref_p, ref_s = ref_step(ref_p, ref_s, jax.device_put(g, one))
        with jax.set_mesh(mesh):
            params = shard(params_np)
            shardings = funcopt.state_shardings(opt, params)
            state = jax.jit(opt.init, out_shardings=shardings)(params)
            step = jax.jit(_step(opt), donate_argnums=(0, 1))
            for g in grads_np:
                params, state = step(params, state, shard(g))
            worst = 0.0
            for got, want in zip(jax.tree.leaves((params, state)),
                                 jax.tree.leaves((ref_p, ref_s)), strict=True):
                want = np.asarray(want)
                for s in got.addressable_shards:
                    diff = np.abs(np.asarray(s.data, np.float64) - want[s.index])
                    worst = max(worst, float(diff.max(initial=0.0)))
            tolerance = 0.0 if name == "adamw" else 1e-6  # sharded sums: round-off only
            if worst > tolerance:
                failures.append(f"{name}: max |sharded - single| = {worst:.3g}")
            print(f"process {process_id}/{num_processes}: {name} on {jax.device_count()} "
                  f"devices ({jax.local_device_count()} local), max |sharded - single| = "
                  f"{worst:.3g}", flush=True)
    jax.distributed.shutdown()
    if failures:
        raise SystemExit("; ".join(failures))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), 2, int(sys.argv[3]))
        return
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.multihost", "--worker",
                               str(i), str(port)], cwd=root, env=env) for i in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
        raise SystemExit(f"worker exit codes {codes}")
    print("multi-process run matches the single-device run")


if __name__ == "__main__":
    main()
