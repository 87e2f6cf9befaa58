from collections import Counter

import pytest

from voxelflow.splits import assign_splits, split_intervals

FRACTIONS = (0.7, 0.15, 0.15)


def test_intervals_cover_zero_to_one():
    intervals = split_intervals(FRACTIONS)
    assert intervals["train"] == (0.0, 0.7)
    assert intervals["val"] == pytest.approx((0.7, 0.85))
    assert intervals["test"][1] == 1.0


def test_fractions_hold_per_class_in_expectation():
    subjects = {f"a{i}": ["a"] for i in range(2000)} | {f"b{i}": ["b"] for i in range(1000)}
    assignment, moved = assign_splits(subjects, FRACTIONS, seed=1)
    assert not moved
    for prefix, total in (("a", 2000), ("b", 1000)):
        counts = Counter(split for name, split in assignment.items() if name[0] == prefix)
        assert sum(counts.values()) == total
        assert abs(counts["train"] / total - 0.7) < 0.05
        assert abs(counts["test"] / total - 0.15) < 0.04


def test_stable_when_subjects_are_added():
    """A subject's split depends on itself only: not on the order or number of the others."""
    before = {f"s{i}": ["a" if i % 3 else "b"] for i in range(60)}
    after = {f"new{i}": ["b"] for i in range(40)} | dict(reversed(list(before.items())))
    first, moved_first = assign_splits(before, FRACTIONS, 5)
    second, moved_second = assign_splits(after, FRACTIONS, 5)
    assert not moved_first and not moved_second
    assert all(second[subject] == split for subject, split in first.items())
    assert assign_splits(before, FRACTIONS, 6)[0] != first  # the seed matters


def test_stratified_by_majority_label():
    """A subject with mostly 'rare' scans counts for the rare class when splits are filled."""
    subjects = {"x": ["rare", "rare", "common"], "y": ["rare"], "z": ["rare"]}
    subjects |= {f"c{i}": ["common"] for i in range(50)}
    for seed in range(10):
        assignment, _ = assign_splits(subjects, FRACTIONS, seed)
        assert sorted(assignment[name] for name in "xyz") == ["test", "train", "val"]


def test_given_splits_count_and_are_never_moved():
    subjects = {f"f{i}": ["a"] for i in range(4)}
    given = {"a": Counter({"val": 1, "test": 1})}
    moved_without_given = 0
    for seed in range(20):
        free_only, moved_free = assign_splits(subjects, FRACTIONS, seed)
        moved_without_given += bool(moved_free)
        assignment, moved = assign_splits(subjects, FRACTIONS, seed, given)
        # val and test already hold a given subject: a move can only be into train
        assert all(assignment[name] == "train" for name in moved)
        assert (Counter(assignment.values()) + given["a"]).keys() == {"train", "val", "test"}
        unmoved = set(subjects) - set(moved) - set(moved_free)
        assert all(assignment[name] == free_only[name] for name in unmoved)
    assert moved_without_given  # the given subjects made a difference somewhere
    two_free = {"f0": ["a"], "f1": ["a"]}
    assignment, _ = assign_splits(two_free, FRACTIONS, 0, {"a": Counter({"val": 1})})
    counts = Counter(assignment.values()) + Counter({"val": 1})
    assert counts["train"] == 1 and counts["test"] == 1  # two free subjects were enough


def test_a_tiny_class_still_gets_every_split():
    subjects = {f"s{i}": ["rare"] for i in range(3)} | {f"c{i}": ["common"] for i in range(200)}
    for seed in range(20):
        assignment, moved = assign_splits(subjects, FRACTIONS, seed)
        rare = Counter(split for name, split in assignment.items() if name.startswith("s"))
        assert rare == {"train": 1, "val": 1, "test": 1}
        assert all(name.startswith("s") for name in moved)  # only the tiny class moved
