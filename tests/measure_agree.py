"""Measures what the per-step stop agreement (`parallel.agree`) costs with two processes on this
machine (CPU devices, gloo), next to a tiny train step's time:

    .venv/bin/python -m tests.measure_agree

Starts two copies of itself as the processes of one job (the README's launch, without training).
"""

import os
import socket
import subprocess
import sys
import time


def _worker(port: str, pid: str, n: int = 300) -> None:
    from fastnst import parallel

    parallel.initialize(f"localhost:{port}", 2, int(pid))
    parallel.barrier("measure")
    for _ in range(20):  # compile and warm up
        parallel.agree(False, False)
    t0 = time.perf_counter()
    for i in range(n):
        parallel.agree(i == n, False)
    if pid == "0":
        per_call = (time.perf_counter() - t0) / n
        print(f"parallel.agree: {per_call * 1e6:.0f} µs per call ({n} calls, 2 processes)")


def main() -> None:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.measure_agree", port, str(i)], env=env)
             for i in (0, 1)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        _worker(*sys.argv[1:])
    else:
        main()
