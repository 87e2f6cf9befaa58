"""Process-level set-up shared by the stage entry points and the CLI: logging, quiet libraries,
and a process pool for per-volume work."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")

QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def quiet_environment() -> None:
    """Turns off TensorFlow start-up noise and telemetry of DVC and Prefect (no internet here)."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def setup_logging(verbose: bool = False) -> None:
    quiet_environment()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "absl", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def iter_items(
    function: Callable[[Item], Result],
    items: Sequence[Item] | Iterable[Item],
    workers: int = 0,
    description: str = "",
) -> Iterator[Result]:
    """Yields ``function(item)`` for every item in order, from a process pool, with progress.

    Results are yielded as they come, so a caller that writes them out keeps memory flat.
    ``workers`` = 0 picks one per core; 1 runs in this process (easier to debug and profile).
    ``function`` must be a module-level function so the pool can pickle it.
    """
    items = list(items)
    workers = workers or default_workers()
    with tqdm(total=len(items), desc=description, unit="vol", disable=None) as progress:
        if workers == 1 or len(items) <= 1:
            for item in items:
                yield function(item)
                progress.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(function, items, chunksize=1):
                    yield result
                    progress.update()


def map_items(
    function: Callable[[Item], Result],
    items: Sequence[Item] | Iterable[Item],
    workers: int = 0,
    description: str = "",
) -> list[Result]:
    """:func:`iter_items`, collected into a list."""
    return list(iter_items(function, items, workers, description))
