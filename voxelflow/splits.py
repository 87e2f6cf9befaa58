"""Train/val/test splits that are stratified by label and grouped by subject.

Subjects, not volumes, are assigned: every scan of a subject lands in the same split. Within
each label stratum the subjects are ordered by a hash of (seed, subject), so the assignment
does not depend on the order of the table, and cut by the split fractions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from voxelflow.seeding import unit_hash

SPLIT_NAMES = ("train", "val", "test")


def split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder apportionment of ``total`` items by ``fractions``.

    Every split with a positive fraction gets at least one item when ``total`` allows it,
    val and test first, so a tiny dataset still has something to validate and test on.
    """
    raw = [total * fraction for fraction in fractions]
    counts = [int(value) for value in raw]
    order = sorted(range(len(raw)), key=lambda index: raw[index] - counts[index], reverse=True)
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    for index in sorted(range(len(counts)), reverse=True):
        if counts[index] == 0 and fractions[index] > 0:
            donor = max(range(len(counts)), key=lambda other: counts[other])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[index] += 1
    return counts


def assign_splits(
    subject_labels: dict[str, list[str]],
    fractions: Sequence[float],
    seed: int,
) -> dict[str, str]:
    """Maps every subject to train, val or test.

    Args:
        subject_labels: the labels of each subject's volumes; a subject is stratified by
            its most common label.
        fractions: train, val and test fractions.
        seed: the global seed.
    """
    strata: dict[str, list[str]] = defaultdict(list)
    for subject, labels in subject_labels.items():
        strata[Counter(sorted(labels)).most_common(1)[0][0]].append(subject)
    assignment: dict[str, str] = {}
    for label in sorted(strata):
        subjects = sorted(strata[label], key=lambda name: (unit_hash(seed, "split", name), name))
        start = 0
        for name, count in zip(SPLIT_NAMES, split_counts(len(subjects), fractions), strict=True):
            for subject in subjects[start : start + count]:
                assignment[subject] = name
            start += count
    return assignment
