"""Data parallelism with `jax.sharding`, on one host or several.

A 1-D mesh over every device of the job with a `data` axis: batches are sharded along it;
parameters, optimizer state, VGG weights and style Grams are replicated. The train step is jitted
with these shardings given explicitly (`step.jit_step`), so XLA inserts the gradient all-reduce,
and batch norm statistics are those of the global batch, as on one device. This module knows
meshes, shardings and processes, nothing of training.

Several hosts: `initialize()` calls `jax.distributed.initialize()` when the job asks for it
(`bin/train --coordinator=... --num_processes=... --process_id=...`, or a cluster environment JAX
recognises: SLURM, Open MPI, TPU pods, or `JAX_COORDINATOR_ADDRESS`); each process then builds
only its slice of every global batch (`data.Batches(process_index=, process_count=)`) and
`global_batch` assembles the global array.
Only process 0 writes metrics, samples, config and the exported model; Orbax checkpoints are
written by all processes together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_GRACE_S = 30  # JAX's own timeouts come this much after ours
_BARRIER_TIMEOUT_S = 300  # barrier()'s bound: the job's --init_timeout_s


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, init_timeout_s: int = 300,
               heartbeat_timeout_s: int = 60) -> bool:
    """`jax.distributed.initialize()` when the arguments or a cluster environment ask for it (once).

    Explicit arguments (`bin/train --coordinator=host:port --num_processes=N --process_id=I`) work
    anywhere; on SLURM, Open MPI or TPU pods JAX finds them itself. Every process must have joined
    within `init_timeout_s`, else JobError (one line; JAX's own timeout is set later, so this one
    fires first: JAX's ends in a native abort with a stack trace). The wait runs in a helper thread,
    so Ctrl-C and SIGTERM still work while a coordinator does not answer. A process that stops
    sending heartbeats for `heartbeat_timeout_s` is declared dead by JAX's coordination service.
    (Defaults, also bin/train's: processes of a cluster job may start minutes apart, but a process
    that is gone should not hold the others long.)
    """
    if jax.distributed.is_initialized():
        return True
    check_launch(coordinator, num_processes, process_id)
    for name, v in (("init_timeout_s", init_timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if v < 1:
            from fastnst.errors import ConfigError

            raise ConfigError(f"--{name} must be >= 1, got {v}")
    if not (coordinator or (num_processes or 1) > 1 or _in_cluster()):
        return False
    # Cross-process collectives for CPU devices (GPU/TPU use their own); harmless elsewhere.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    global _BARRIER_TIMEOUT_S
    _BARRIER_TIMEOUT_S = init_timeout_s  # set-up takes as long as starting: the same bound
    _wait_in_thread(
        lambda: jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
            initialization_timeout=init_timeout_s + _GRACE_S, heartbeat_timeout_seconds=heartbeat_timeout_s),
        init_timeout_s,
        lambda: f"the job did not assemble within {init_timeout_s} s (--init_timeout_s): process "
                f"{process_id if process_id is not None else '?'} of {num_processes or '?'} could not reach "
                f"the coordinator {coordinator or '(from the cluster environment)'}, or not every "
                "process was started with the same --coordinator and --num_processes")
    return True


def _wait_in_thread(fn, timeout_s: float, message) -> None:
    """Runs `fn` (a blocking call into JAX's coordination service) in a daemon thread and waits for
    it in short slices, so signals reach the main thread (a call blocked in native code would hold
    them back for its whole timeout). JobError(message()) if it has not returned in `timeout_s` or
    if it failed."""
    import threading

    from fastnst.errors import JobError

    done, failed = threading.Event(), []

    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- reported below, in the main thread
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="fastnst-coordination").start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.2):
        if time.monotonic() > deadline:
            raise JobError(message())
    if failed:
        text = str(failed[0]).strip()
        detail = text.splitlines()[0] if text else type(failed[0]).__name__
        raise JobError(f"{message()} ({detail})")


def _in_cluster() -> bool:
    """Whether a cluster environment that JAX recognises describes the job."""
    return any(os.environ.get(k) for k in _CLUSTER_ENV)


def check_launch(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Refuses an impossible multi-process launch before anything connects (ConfigError, one line):
    a process count below 1, a process index outside [0, count), a coordinator that is not
    HOST:PORT or whose host does not resolve."""
    import socket

    from fastnst.errors import ConfigError

    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or 1):
        raise ConfigError(f"--process_id must be in [0, {(num_processes or 1) - 1}] for "
                          f"--num_processes={num_processes or 1}, got {process_id}")
    if (num_processes or 1) > 1 and (coordinator is None or process_id is None) and not _in_cluster():
        raise ConfigError("--num_processes > 1 needs --coordinator=HOST:PORT and --process_id on every "
                          "process")
    if coordinator:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
        except OSError:
            raise ConfigError(f"--coordinator {coordinator}: cannot resolve host {host!r}") from None


def barrier(name: str) -> None:
    """Waits until every process of the job gets here (no-op with one process); JobError after the
    job's `init_timeout_s` (see `initialize`).

    Uses the coordination service (gRPC, with a timeout we choose), not a collective: the CPU
    collectives (gloo) give up on a peer that has not connected within about 30 s, which a peer
    still compiling on a loaded machine exceeds at the job's first collective ("Gloo context
    initialization failed: Connect timeout", seen with two processes on one 2-core machine).
    Called right before the first collective, so all processes reach it together.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client of jax.distributed.initialize (no public handle)

    client, timeout_s = distributed.global_state.client, _BARRIER_TIMEOUT_S
    _wait_in_thread(lambda: client.wait_at_barrier(f"fastnst:{name}", (timeout_s + _GRACE_S) * 1000),
                    timeout_s, lambda: f"process {jax.process_index()}: not every process of the job "
                                       f"reached {name!r} within {timeout_s} s (--init_timeout_s): one "
                                       "stopped, refused its config or workdir, or is stuck")


def leave(timeout_s: float) -> None:
    """JAX's distributed shutdown (a barrier with every process, then the coordination service
    stops), waited for at most `timeout_s`. Processes that fail alike meet there and exit cleanly;
    leaving alone instead, the process hosting the service took it down while the others were
    still printing their line, and they aborted natively (seen with a resume refused by both)."""
    from fastnst.errors import JobError

    try:
        _wait_in_thread(jax.distributed.shutdown, timeout_s, lambda: "the others did not leave")
    except JobError:
        pass


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over every process of the job (one small all-gather; free with one process).

    The train loop asks this before every step whether to stop (a signal to any process, or any
    process's clock past the time limit), so all processes leave at the same step and save one
    consistent checkpoint together; deciding alone leaves the others waiting in the next collective.
    """
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    try:
        gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    except ValueError as e:
        # A peer killed during this all-gather surfaces as ValueError ("UNKNOWN: Gloo AllGather
        # failed: ... Connection reset by peer"; seen under load), not as the JaxRuntimeError a
        # failed step raises; re-raised as one, so the train loop reports the lost process in one
        # line instead of a traceback and a native abort 40 s later.
        raise jax.errors.JaxRuntimeError(str(e)) from e
    return tuple(bool(v) for v in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of the job, axis `data` (automatic sharding propagation inside
    the step: the model code needs no sharding annotations)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split along the batch axis (`axis`: 0, or 1 for K batches stacked) over the `data` axis."""
    return NamedSharding(mesh, P(*([None] * axis), "data"))


def replicate(tree, mesh: Mesh):
    """Host values every process holds in full (parameters, optimizer state, VGG weights) as arrays
    replicated over the mesh; works across processes, unlike `device_put`."""
    rep = replicated(mesh)

    def one(x):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, rep, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, axis: int = 0) -> dict[str, jax.Array]:
    """The global batch from this process's slice (the whole batch in a one-process run); `axis`
    1 for K batches stacked on a leading axis."""
    sharding = data_sharded(mesh, axis)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def is_writer() -> bool:
    """Whether this process writes files (process 0)."""
    return jax.process_index() == 0


def mesh_record(mesh) -> dict:
    """What `config.json` records of the devices a run used."""
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "devices": jax.device_count(),
            "processes": jax.process_count(), "axes": dict(mesh.shape)}
