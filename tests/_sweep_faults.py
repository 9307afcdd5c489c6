"""Run functions for the sweep fault tests; a module so dask worker processes can import them."""
import os

from engine.sweep import run_config


def raising(config, backend):
    """Raises for seed 13, else a normal run."""
    if config["seed"] == 13:
        raise RuntimeError("boom: injected failure")
    return run_config(config, backend)


def dying(config, backend):
    """Kills its own worker process (like the OOM killer would) for seed 13, else a normal run."""
    if config["seed"] == 13:
        os._exit(17)
    return run_config(config, backend)
