"""Fixtures of the stage tests: the tiny pipeline trained once per session."""

import pytest

from stages import evaluate, finetune, pretrain


@pytest.fixture(scope="session")
def trained(tiny_data, tiny_params, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    pretrain.run(tiny_data["preprocessed"], root / "pretrained", tiny_params)
    finetune.run(
        root / "pretrained",
        tiny_data["augmented"],
        tiny_data["preprocessed"],
        root / "classifier",
        tiny_params,
    )
    evaluate.run(
        root / "classifier",
        tiny_data["preprocessed"],
        root / "metrics",
        root / "plots",
        tiny_params,
    )
    return root
