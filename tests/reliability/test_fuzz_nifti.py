"""Fuzzing the NIfTI reading path (ingest's per-file check): random and mutated headers and
bytes never crash or hang it; every case ends accepted or rejected with a reason."""

from __future__ import annotations

import gzip
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxelflow.ingest import Candidate, Checked, check_volume
from voxelflow.labels import Rejection
from voxelflow.params import IngestParams

SECONDS_PER_CASE = 10
MAX_VOXELS = 2_000_000  # small, so that a header may claim too much


def _seed_file(dtype: str, slope: float) -> bytes:
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(9, 10, 11)) * 100).astype(dtype)
    image = nib.Nifti1Image(data, np.diag([1.5, 1.0, 2.0, 1.0]), dtype=dtype)
    image.header.set_slope_inter(slope, 3.0)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"comment!"))
    return image.header.binaryblock + b"\0" * 4 + b"comment!" + data.tobytes()


SEEDS = [_seed_file("int16", 0.5), _seed_file("float32", 1.0), _seed_file("uint8", 2.0)]
# (offset, struct format) of the header fields a corrupt or hostile file gets wrong
FIELDS = [
    (0, "<i"),  # sizeof_hdr
    (40, "<8h"),  # dim
    (70, "<h"),  # datatype
    (72, "<h"),  # bitpix
    (76, "<8f"),  # pixdim
    (108, "<f"),  # vox_offset
    (112, "<f"),  # scl_slope
    (116, "<f"),  # scl_inter
    (252, "<h"),  # qform_code
    (254, "<h"),  # sform_code
    (256, "<6f"),  # quaternion and offsets
    (280, "<12f"),  # srow_x/y/z
    (344, "<4s"),  # magic
]


@st.composite
def mutated_files(draw) -> tuple[bytes, bool]:
    """(bytes, gzipped): a valid file with some fields, bytes or its length changed."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        offset, layout = draw(st.sampled_from(FIELDS))
        count = struct.calcsize(layout)
        if layout.endswith("s"):
            values = [draw(st.binary(min_size=4, max_size=4))]
        elif layout[-1] in "hi":
            bound = 2 ** (8 * struct.calcsize("<" + layout[-1]) - 1)
            values = draw(
                st.lists(
                    st.one_of(
                        st.integers(-bound, bound - 1),
                        st.integers(-3, 70_000).filter(lambda v, bound=bound: -bound <= v < bound),
                    ),
                    min_size=len(struct.unpack(layout, bytes(count))),
                    max_size=len(struct.unpack(layout, bytes(count))),
                )
            )
        else:
            values = draw(
                st.lists(
                    st.floats(width=32, allow_nan=True, allow_infinity=True),
                    min_size=len(struct.unpack(layout, bytes(count))),
                    max_size=len(struct.unpack(layout, bytes(count))),
                )
            )
        data[offset : offset + count] = struct.pack(layout, *values)
    for _ in range(draw(st.integers(0, 6))):  # random bytes anywhere
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    gzipped = draw(st.booleans())
    payload = gzip.compress(bytes(data)) if gzipped else bytes(data)
    if gzipped and draw(st.booleans()):  # a truncated or damaged gzip stream
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload, gzipped


@contextmanager
def deadline(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"the reading path took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check(folder: Path, name: str, payload: bytes) -> Checked | Rejection:
    (folder / name).write_bytes(payload)
    defaults = IngestParams()
    candidate = Candidate(
        id="case",
        path=name,
        label="a",
        subject="case",
        split="",
        data_dir=str(folder),
        max_voxels=MAX_VOXELS,
        min_size=defaults.min_size,
        volume_index=None,
        non_finite=defaults.non_finite,
        seed=0,
    )
    with deadline(SECONDS_PER_CASE):
        return check_volume(candidate)


def _assert_accounted_for(outcome, name: str) -> None:
    if isinstance(outcome, Rejection):
        assert outcome.input == name and outcome.reason.strip(), outcome
        return
    assert isinstance(outcome, Checked), outcome
    shape = tuple(int(size) for size in outcome.row["shape"].split("x"))
    assert len(shape) == 3 and min(shape) >= 1 and np.prod(shape) <= MAX_VOXELS
    assert all(
        np.isfinite(float(step)) and float(step) > 0 for step in outcome.row["spacing"].split("x")
    )


@pytest.mark.slow
@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated_files())
def test_mutated_nifti_files_are_accepted_or_rejected_with_a_reason(case, tmp_path):
    payload, gzipped = case
    name = "case.nii.gz" if gzipped else "case.nii"
    _assert_accounted_for(_check(tmp_path, name, payload), name)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=st.binary(max_size=2048), name=st.sampled_from(["r.nii", "r.nii.gz", "r.mgz"]))
def test_random_bytes_are_rejected_with_a_reason(payload, name, tmp_path):
    outcome = _check(tmp_path, name, payload)
    assert isinstance(outcome, Rejection) and outcome.reason.strip(), outcome


def test_the_seed_files_are_accepted(tmp_path):
    for index, payload in enumerate(SEEDS):
        outcome = _check(tmp_path, f"seed{index}.nii", payload)
        assert isinstance(outcome, Checked), outcome
