"""Preloaded into every worker process of the sweeps' LocalCluster (``engine.sweep.dask_client``).

Ctrl-C in a terminal sends SIGINT to the whole foreground process group, worker processes
included; each would print a KeyboardInterrupt traceback (issue 12 item 3). Only the driver
should react: it cancels the runs in flight and shuts the workers down. Workers started by the
cluster inherit an ignored SIGINT already; this covers a worker the nanny restarts later.
"""
import signal


def dask_setup(worker):  # noqa: ARG001 - dask's preload hook
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # pragma: no cover - not the main thread of the process
        pass
