"""Train/val/test splits that are grouped by subject, stratified by label, and stable.

Subjects, not volumes, are assigned: every scan of a subject lands in the same split. A
subject's split comes from a hash of (seed, subject) alone: the hash is a number in [0, 1)
and the split fractions cut [0, 1) into intervals (train [0, 0.7), val [0.7, 0.85), test
[0.85, 1) by default). So the split of a subject depends neither on the order of the table
nor on the other subjects: adding volumes later never moves an existing subject from train
to test, which would leak test data into a retrained model.

The price of stability is that the fractions hold per class in expectation rather than
exactly (with 60 subjects per class and a 15% split, 9 +- 3). One exception keeps tiny
classes usable: when a class has no subject in some split, the subject of that class whose
hash lies nearest to the split's interval is moved there (from a split that keeps at least
one). Such moves can change when subjects are added to that class; they are returned so that
ingest reports them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import accumulate

from voxelflow.seeding import unit_hash

SPLIT_NAMES = ("train", "val", "test")


def split_intervals(fractions: Sequence[float]) -> dict[str, tuple[float, float]]:
    """The [low, high) interval of [0, 1) that each split takes."""
    edges = [0.0, *accumulate(fractions)]
    edges[-1] = 1.0
    return {name: (edges[i], edges[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


def split_of(value: float, intervals: dict[str, tuple[float, float]]) -> str:
    for name, (low, high) in intervals.items():
        if low <= value < high:
            return name
    return SPLIT_NAMES[-1]


def _distance(value: float, interval: tuple[float, float]) -> float:
    low, high = interval
    return max(low - value, value - high, 0.0)


def assign_splits(
    subject_labels: dict[str, list[str]],
    fractions: Sequence[float],
    seed: int,
    given: dict[str, Counter] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Maps every subject to train, val or test.

    Args:
        subject_labels: the labels of each subject's volumes; a subject is stratified by
            its most common label.
        fractions: train, val and test fractions.
        seed: the global seed.
        given: per label, how many subjects the table already puts in each split (a
            ``split`` column); they count as filling those splits and are never moved.

    Returns:
        The assignment, and the subjects moved to fill a split that their class had no
        subject in (see the module docstring).
    """
    given = given or {}
    intervals = split_intervals(fractions)
    hashes = {subject: unit_hash(seed, "split", subject) for subject in subject_labels}
    assignment = {subject: split_of(value, intervals) for subject, value in hashes.items()}
    strata: dict[str, list[str]] = defaultdict(list)
    for subject, labels in subject_labels.items():
        strata[Counter(sorted(labels)).most_common(1)[0][0]].append(subject)
    moved = []
    for label in sorted(strata):
        subjects = sorted(strata[label])
        fixed = given.get(label, Counter())
        for name in reversed(SPLIT_NAMES):  # test, val, train: the small splits first
            counts = Counter(assignment[subject] for subject in subjects) + fixed
            if counts[name]:
                continue
            donors = [subject for subject in subjects if counts[assignment[subject]] > 1]
            if not donors:
                continue
            chosen = min(
                donors, key=lambda subject: (_distance(hashes[subject], intervals[name]), subject)
            )
            assignment[chosen] = name
            moved.append(chosen)
    return assignment, moved
