"""Process-level set-up shared by the stage entry points and the CLI: logging, quiet libraries,
and a bounded per-volume executor (a local process pool or a Dask cluster)."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from voxelflow.atomic import disk_full
from voxelflow.lock import WorkspaceBusyError, stage_lock

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


RESOURCE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is exhausted; free some space",
    errno.EROFS: "the file system is read-only; make it writable",
    errno.EACCES: "permission denied; make the folder writable for this user",
    errno.EPERM: "operation not permitted; make the folder writable for this user",
    errno.EFBIG: "the file is larger than this system allows",
}


def describe_os_error(stage: str, error: OSError) -> str | None:
    """A one-paragraph message for a resource failure (full disk, read-only folder...), or
    None for other ``OSError``s."""
    advice = RESOURCE_ERRORS.get(error.errno)
    if advice is None:
        return None
    where = error.filename or "its output"
    return (
        f"{stage}: cannot write {where}: {os.strerror(error.errno)} "
        f"({errno.errorcode[error.errno]}). {advice[0].upper()}{advice[1:]} and rerun. "
        "Nothing was replaced: the previous output, if any, is intact, and no partial output "
        "was left in its place."
    )


def is_secondary_worker() -> bool:
    """Whether ``TF_CONFIG`` makes this process a worker of a multi-worker cluster other
    than the one that writes the outputs (the chief, or worker 0 where there is no chief)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task, cluster = config.get("task", {}), config.get("cluster", {})
        if "chief" in cluster:
            return task.get("type") != "chief"
        return task.get("type") == "worker" and int(task.get("index", 0)) != 0
    except (ValueError, AttributeError, TypeError):
        return False  # devices.py reports a malformed TF_CONFIG


def code_fingerprint(libraries: Sequence[str] = ("numpy", "scipy", "nibabel")) -> str:
    """A digest of voxelflow's code (the ``voxelflow`` and ``stages`` packages) and the
    versions of ``libraries``: work saved by a killed run is resumed only by the same code."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in ("voxelflow", "stages"):
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for library in libraries:
        try:
            digest.update(f"{library}=={version(library)}".encode())
        except PackageNotFoundError:
            digest.update(f"{library}: absent".encode())
    return digest.hexdigest()


@contextmanager
def stage_process(stage: str, workspace: str = ".") -> Iterator[None]:
    """The frame of a stage's ``main``: logging, the workspace lock, and a clear one-line
    error (exit status 1) for a locked workspace or a full or read-only disk."""
    setup_logging()
    try:
        if is_secondary_worker():  # the chief of a multi-worker cluster holds the lock
            yield
            return
        with stage_lock(workspace, stage):
            yield
    except WorkspaceBusyError as error:
        raise SystemExit(f"{stage}: {error}") from None
    except OSError as error:
        if error.errno is None and disk_full(workspace):  # a short write (h5py, NumPy...)
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), error.filename)
        message = describe_os_error(stage, error)
        if message is None:
            raise
        logging.getLogger(f"voxelflow.stages.{stage}").debug("resource error", exc_info=True)
        raise SystemExit(message) from None


DASK_CONNECT_TIMEOUT = "10s"
"""How long :func:`iter_items` waits for a Dask scheduler before giving up."""

WINDOW_PER_WORKER = 2
"""Items in flight per worker: enough to keep every worker busy, few enough to keep memory flat."""


def default_workers() -> int:
    """All cores this process may run on (its CPU affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def iter_items(
    function: Callable[[Item], Result],
    items: Sequence[Item] | Iterable[Item],
    workers: int = 0,
    description: str = "",
    dask_address: str | None = None,
) -> Iterator[Result]:
    """Yields ``function(item)`` for every item, in input order, with a progress bar.

    At most ``2 * workers`` items are in flight at a time: the oldest is waited for, yielded,
    and only then is the next item taken from ``items`` (a generator is consumed lazily), so a
    caller that writes results out as they come keeps memory flat.

    ``workers`` = 0 picks one per usable core (or, on Dask, the cluster's total threads);
    1 runs in this process (easier to debug and profile). ``dask_address`` (such as
    ``"tcp://scheduler:8786"``) runs the items on that Dask cluster instead of a local process
    pool. ``function`` must be a module-level function (importable by the pool's or the
    cluster's workers) and items and results must pickle. An exception raised by ``function``
    reaches the caller with its own type and message.
    """
    total = len(items) if hasattr(items, "__len__") else None
    with tqdm(total=total, desc=description, unit="vol", disable=None) as progress:
        if dask_address:
            results = _iter_dask(function, items, workers, dask_address)
        else:
            results = _iter_pool(function, items, workers or default_workers(), total)
        for result in results:
            yield result
            progress.update()


def map_items(
    function: Callable[[Item], Result],
    items: Sequence[Item] | Iterable[Item],
    workers: int = 0,
    description: str = "",
    dask_address: str | None = None,
) -> list[Result]:
    """:func:`iter_items`, collected into a list."""
    return list(iter_items(function, items, workers, description, dask_address))


def _iter_pool(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    total: int | None,
) -> Iterator[Result]:
    if total is not None:
        workers = min(workers, total)
    iterator = iter(items)
    # Peek at two items so that a single item (from a generator too) runs inline.
    head = list(itertools.islice(iterator, 2))
    iterator = itertools.chain(head, iterator)
    if workers <= 1 or len(head) <= 1:
        for item in iterator:
            yield function(item)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from _bounded(
            lambda item: pool.submit(function, item),
            lambda future: future.result(),
            lambda pending: [future.cancel() for future in pending],
            iterator,
            WINDOW_PER_WORKER * workers,
        )


def _iter_dask(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    address: str,
) -> Iterator[Result]:
    from dask.distributed import Client  # lazily: importing distributed takes seconds

    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address} (waited {DASK_CONNECT_TIMEOUT}): {error}"
        ) from error
    try:
        workers = workers or max(1, sum(client.nthreads().values()))
        run = f"voxelflow-{getattr(function, '__name__', 'item')}-{uuid.uuid4().hex}"
        keys = itertools.count()
        yield from _bounded(
            lambda item: client.submit(function, item, pure=False, key=f"{run}-{next(keys)}"),
            lambda future: future.result(),
            lambda pending: client.cancel(list(pending)) if pending else None,
            iter(items),
            WINDOW_PER_WORKER * workers,
        )
    finally:
        client.close()


def _bounded(
    submit: Callable[[Any], Any],
    result: Callable[[Any], Any],
    cancel: Callable[[deque[Any]], Any],
    items: Iterator[Any],
    window: int,
) -> Iterator[Any]:
    """Submits items with at most ``window`` futures pending, yielding results in order.

    On an error (or when the caller stops early) the futures still pending are cancelled.
    """
    pending: deque[Any] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        cancel(pending)


def add_compute_options(parser) -> None:
    """``--workers`` and ``--dask-address`` for a stage's argparse parser (default: params)."""
    parser.add_argument(
        "--workers", type=int, default=None, help="processes; 0: every core [params: compute]"
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        help="run per-volume work on this Dask scheduler, e.g. tcp://10.0.0.5:8786 "
        "[params: compute.dask_address]",
    )


def compute_options(compute, workers: int | None, dask_address: str | None):
    """(workers, dask_address): the command line's values where given, else the params'."""
    return (
        compute.workers if workers is None else workers,
        compute.dask_address if dask_address is None else dask_address,
    )
