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


def logging_run(config, backend):
    """A normal run that appends "width depth start end" (wall-clock seconds) to the file named by
    ENGINE_TEST_RUN_LOG: the order and the overlap of runs across worker processes."""
    import time
    t0 = time.time()
    out = run_config(config, backend)
    with open(os.environ["ENGINE_TEST_RUN_LOG"], "a") as f:
        f.write(f"{config['width']} {config['depth']} {t0!r} {time.time()!r}\n")
    return out
