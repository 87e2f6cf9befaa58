from collections import Counter

from voxelflow.splits import assign_splits, split_counts


def test_split_counts_sum_and_minimums():
    assert split_counts(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert split_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert split_counts(101, (0.6, 0.2, 0.2)) == [61, 20, 20]


def test_stratified_and_grouped():
    subjects = {f"s{i}": ["a"] * (1 + i % 2) for i in range(40)}
    subjects.update({f"t{i}": ["b"] for i in range(20)})
    assignment = assign_splits(subjects, (0.5, 0.25, 0.25), seed=1)
    assert set(assignment) == set(subjects)
    per_class = Counter((name[0], split) for name, split in assignment.items())
    assert per_class[("s", "train")] == 20 and per_class[("s", "val")] == 10
    assert per_class[("t", "train")] == 10 and per_class[("t", "test")] == 5


def test_deterministic_and_order_independent():
    subjects = {f"s{i}": ["a" if i % 3 else "b"] for i in range(30)}
    reversed_subjects = dict(reversed(list(subjects.items())))
    assert assign_splits(subjects, (0.7, 0.15, 0.15), 5) == assign_splits(
        reversed_subjects, (0.7, 0.15, 0.15), 5
    )
    assert assign_splits(subjects, (0.7, 0.15, 0.15), 5) != assign_splits(
        subjects, (0.7, 0.15, 0.15), 6
    )
