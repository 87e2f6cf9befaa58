"""The per-item executor: input order, a bounded window of work in flight, errors, Dask."""

from __future__ import annotations

import os
import socket
import time

import pytest

from voxelflow import runtime
from voxelflow.runtime import default_workers, iter_items, map_items

# Functions run by the pool or by Dask workers must be module-level so that they pickle.


def slow_square(pair: tuple[int, int]) -> int:
    """Later items finish first: the work time is inverse to the index."""
    index, count = pair
    time.sleep(0.05 * (count - index))
    return index * index


def square(value: int) -> int:
    return value * value


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError(f"bad item {value}")
    return value


def process_id(_value: int) -> int:
    return os.getpid()


class Recorder:
    """A generator input that counts how many items the executor has taken so far."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.consumed = 0

    def __iter__(self):
        for value in range(self.count):
            self.consumed += 1
            yield value


def test_default_workers_uses_every_usable_core(monkeypatch):
    assert default_workers() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert default_workers() == 32  # no cap at 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1


def test_pool_keeps_input_order():
    count = 8
    jobs = [(index, count) for index in range(count)]
    assert map_items(slow_square, jobs, workers=2) == [index * index for index in range(count)]


def test_pool_runs_in_other_processes():
    assert os.getpid() not in map_items(process_id, range(4), workers=2)


def test_pool_takes_a_bounded_window_of_a_generator():
    workers, count = 2, 20
    recorder = Recorder(count)
    results = iter_items(square, iter(recorder), workers=workers)
    assert next(results) == 0
    assert recorder.consumed <= 2 * workers + 1
    for index, result in enumerate(results, start=1):
        assert result == index * index
        assert recorder.consumed <= index + 2 * workers + 1
    assert recorder.consumed == count


def test_pool_error_reaches_the_caller():
    with pytest.raises(ValueError, match="bad item 3"):
        map_items(fail_on_three, range(8), workers=2)


def test_one_worker_runs_inline():
    # A lambda cannot be pickled: it only works because nothing leaves this process.
    assert map_items(lambda value: (value, os.getpid()), range(3), workers=1) == [
        (value, os.getpid()) for value in range(3)
    ]
    with pytest.raises(ValueError, match="bad item 3"):
        map_items(fail_on_three, range(8), workers=1)


def test_one_item_runs_inline_from_a_list_or_a_generator():
    assert map_items(process_id, [0], workers=2) == [os.getpid()]
    assert map_items(process_id, (value for value in [0]), workers=2) == [os.getpid()]
    assert map_items(square, [], workers=2) == []
    assert map_items(square, iter([]), workers=2) == []


@pytest.fixture(scope="module")
def dask_address():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_dask_matches_the_pool_in_input_order(dask_address):
    count = 8
    jobs = [(index, count) for index in range(count)]
    on_dask = map_items(slow_square, jobs, description="dask", dask_address=dask_address)
    assert on_dask == map_items(slow_square, jobs, workers=2)
    assert on_dask == [index * index for index in range(count)]


def test_dask_takes_a_bounded_window_of_a_generator(dask_address):
    count = 12
    recorder = Recorder(count)
    # workers=0: the window follows the cluster's two threads.
    results = iter_items(square, iter(recorder), dask_address=dask_address)
    assert next(results) == 0
    assert recorder.consumed <= 2 * 2 + 1
    assert list(results) == [index * index for index in range(1, count)]
    assert recorder.consumed == count


def test_dask_error_reaches_the_caller(dask_address):
    with pytest.raises(ValueError, match="bad item 3"):
        map_items(fail_on_three, range(8), workers=2, dask_address=dask_address)
    # The client was closed and the cluster still works afterwards.
    assert map_items(square, range(5), dask_address=dask_address) == [0, 1, 4, 9, 16]


def test_unreachable_scheduler_names_the_address(monkeypatch):
    pytest.importorskip("distributed")
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    monkeypatch.setattr(runtime, "DASK_CONNECT_TIMEOUT", "1s")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        map_items(square, range(3), dask_address=address)
    assert time.monotonic() - started < 60
