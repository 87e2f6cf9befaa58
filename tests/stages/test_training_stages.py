"""pretrain -> finetune -> evaluate on the tiny dataset, and the bundle's round trip."""

import inspect
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from stages import evaluate, finetune, pretrain
from voxelflow.bundle import load_bundle
from voxelflow.data import preprocessed_source
from voxelflow.dataset import read_rows
from voxelflow.training import class_weights


def test_pretraining_never_reads_val_or_test(tiny_data):
    source = pretrain.pretraining_source(tiny_data["preprocessed"])

    splits = {row["id"]: row["split"] for row in read_rows(tiny_data["preprocessed"] / "index.csv")}
    assert {splits[identifier] for identifier in source.ids} == {"train", "unlabelled"}


def test_pretrain_outputs(trained):
    summary = json.loads((trained / "pretrained" / "pretrain.json").read_text())
    assert summary["mode"] == "self_supervised" and summary["splits"] == ["train", "unlabelled"]
    assert (trained / "pretrained" / "encoder.keras").is_file()
    assert summary["devices"]["distribution"] == "single"
    assert summary["devices"]["precision"] == "float32"
    full = json.loads((trained / "pretrained" / "model_summary.json").read_text())
    assert full["name"] == "autoencoder"
    assert set(full["sub_models"]) == {"encoder", "decoder"}
    # in input voxels: the encoder's 13 (see test_models), then the decoder's 3x3x3
    # convolution after upsampling: 15
    assert full["sub_models"]["decoder"]["receptive_field"][0]["voxels"] == [15, 15, 15]
    assert full["receptive_field"][0]["mm"] == [60.0, 60.0, 60.0]  # 15 voxels of 4 mm
    assert summary["model"]["gmacs_per_volume"] == full["gmacs_per_volume"] > 0
    assert "loss" in (trained / "pretrained" / "history.csv").read_text().splitlines()[0]


def test_finetune_bundle_and_frozen_blocks(trained, tiny_params):
    bundle = json.loads((trained / "classifier" / "bundle.json").read_text())
    assert bundle["classes"] == ["normal", "lesion", "atrophy"]
    assert bundle["preprocess"]["target_shape"] == [16, 16, 16]
    assert bundle["params"]["finetune"]["epochs"] == tiny_params.finetune.epochs
    assert bundle["frozen_blocks"] == ["stem"]
    full = json.loads((trained / "classifier" / "model_summary.json").read_text())
    assert bundle["model"]["parameters"] == full["parameters"]
    # the frozen stem: a 3x3x3 convolution from 1 channel to model.width, with its bias
    width = tiny_params.model.width
    assert full["parameters"]["frozen"] == 27 * width + width
    assert full["parameters"]["trainable"] > 0
    assert bundle["model"]["encoder_receptive_field"]["voxels"] == [13, 13, 13]
    assert bundle["model"]["encoder_receptive_field"]["mm"] == [52.0, 52.0, 52.0]
    assert full["receptive_field"][0]["voxels"] == "global"
    assert not (trained / "classifier" / "checkpoint.keras").exists()
    header = (trained / "classifier" / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,") and "val_loss" in header


def test_finetune_starts_from_pretrained_encoder(trained):
    pretrained = keras.saving.load_model(trained / "pretrained" / "encoder.keras", safe_mode=True)
    model, _ = load_bundle(trained / "classifier")
    stem = model.get_layer("encoder").get_layer("stem_conv").get_weights()[0]
    assert np.array_equal(stem, pretrained.get_layer("stem_conv").get_weights()[0])  # frozen


def test_bundle_round_trip_predicts_same(trained, tiny_data):
    model, bundle = load_bundle(trained / "classifier")
    source = preprocessed_source(tiny_data["preprocessed"], ("test",), bundle["classes"])
    x = np.stack([source.read(i) for i in range(len(source))])[..., None]
    probabilities = model.predict(x, verbose=0)
    assert probabilities.shape == (len(source), 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    predictions = [
        line.split(",")
        for line in (trained / "metrics" / "predictions.csv").read_text().splitlines()[1:]
    ]
    assert [row[0] for row in predictions] == source.ids
    assert np.allclose([float(row[3]) for row in predictions], probabilities[:, 0], atol=1e-4)


def test_evaluate_metrics_and_plots(trained):
    metrics = json.loads((trained / "metrics" / "eval.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_auc_ovr", "per_class", "confusion_matrix"):
        assert key in metrics
    assert 0 <= metrics["balanced_accuracy"] <= 1
    matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == metrics["test_volumes"]
    assert (trained / "plots" / "confusion.csv").read_text().startswith("id,actual,predicted")
    assert list((trained / "plots" / "roc").glob("*.csv"))
    assert list((trained / "plots" / "pr").glob("*.csv"))
    reliability = read_rows(trained / "plots" / "reliability.csv")
    assert sum(int(row["volumes"]) for row in reliability) == metrics["test_volumes"]
    intervals = metrics["confidence_intervals"]
    low, high = intervals["balanced_accuracy"]
    assert low <= metrics["balanced_accuracy"] <= high
    assert sum(metrics["test_volumes_per_class"].values()) == metrics["test_volumes"]
    for key in ("cohen_kappa", "log_loss", "brier", "ece"):
        assert metrics[key] is not None
    assert "tta" not in metrics  # off by default


def test_finetune_refuses_encoder_of_other_shape(trained, tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        finetune.load_encoder(trained / "pretrained", (32, 32, 32, 1))
    with pytest.raises(ValueError, match="not found"):
        finetune.load_encoder(tmp_path, (16, 16, 16, 1))


def test_class_weights_balance_and_missing_class():
    weights = class_weights([0, 0, 0, 1], ["a", "b"])
    assert weights[1] == 3 * weights[0]
    with pytest.raises(ValueError, match=r"classes \['b'\] have no training volume"):
        class_weights([0, 0], ["a", "b"])


def test_restoration_pair_targets_a_subvolume_and_is_reproducible(tiny_data, tiny_params):
    source = pretrain.pretraining_source(tiny_data["preprocessed"])
    whole = tiny_params.model_copy(deep=True)
    whole.pretrain.subvolume_scale = (1.0, 1.0)
    corrupted, original = pretrain.restoration_pair(whole, seed=1)(source, 0, 0)
    assert corrupted.shape == original.shape == (16, 16, 16, 1)
    assert np.array_equal(original[..., 0], source.read(0))  # scale 1: the whole volume
    assert not np.allclose(corrupted, original)

    example = pretrain.restoration_pair(tiny_params, seed=1)  # sub-volumes of 60-100%
    corrupted, target = example(source, 0, 0)
    assert target.shape == (16, 16, 16, 1) and not np.array_equal(target[..., 0], source.read(0))
    assert np.array_equal(example(source, 0, 0)[0], corrupted)
    assert not np.array_equal(example(source, 0, 1)[0], corrupted)  # a new corruption each epoch


def test_stage_refuses_to_replace_a_folder_of_other_files(
    trained, tiny_data, tiny_params, tmp_path
):
    (tmp_path / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty and not a previous output"):
        evaluate.run(
            trained / "classifier", tiny_data["preprocessed"], tmp_path / "m", tmp_path, tiny_params
        )
    assert (tmp_path / "thesis.txt").read_text() == "precious"


def test_finetune_online_augmentation(trained, tiny_data, tiny_params, tmp_path):
    params = tiny_params.model_copy(deep=True)
    params.finetune.augmentation = "online"
    finetune.run(
        trained / "pretrained",
        tmp_path / "no-cache-needed",
        tiny_data["preprocessed"],
        tmp_path / "online",
        params,
    )
    bundle = json.loads((tmp_path / "online" / "bundle.json").read_text())
    cached = json.loads((trained / "classifier" / "bundle.json").read_text())
    assert bundle["params"]["finetune"]["augmentation"] == "online"
    # as many samples per epoch as the cache (copies + originals), drawn afresh, without it
    assert bundle["train_samples"] == cached["train_samples"]


def test_finetune_without_augmentation_sees_only_originals_as_often(
    trained, tiny_data, tiny_params, tmp_path
):
    params = tiny_params.model_copy(deep=True)
    params.finetune.augmentation = "none"
    finetune.run(
        trained / "pretrained",
        tmp_path / "no-cache-needed",
        tiny_data["preprocessed"],
        tmp_path / "plain",
        params,
    )
    bundle = json.loads((tmp_path / "plain" / "bundle.json").read_text())
    cached = json.loads((trained / "classifier" / "bundle.json").read_text())
    assert bundle["train_samples"] == cached["train_samples"]  # the same steps per epoch
    originals = len(
        [
            row
            for row in read_rows(tiny_data["preprocessed"] / "index.csv")
            if row["split"] == "train"
        ]
    )
    assert bundle["train_samples"] == originals * (params.augment.copies + 1)


def test_min_steps_per_epoch_makes_an_epoch_of_whole_passes(
    trained, tiny_data, tiny_params, tmp_path, monkeypatch
):
    from voxelflow.data import cache_source, preprocessed_source, steps_per_epoch
    from voxelflow.dataset import class_names, read_spec

    classes = class_names(tiny_data["preprocessed"])
    spec = read_spec(tiny_data["preprocessed"])
    train = cache_source(tiny_data["augmented"], classes)
    natural = steps_per_epoch(len(train), 4)
    data = finetune._training_data(
        train, len(train), tuple(spec.target_shape), 3, spec, tiny_params, 1, 2, passes=3
    )
    batches = [x.numpy() for x, _ in data(0).take(6 * natural)]
    first = np.concatenate(batches[: 3 * natural])
    # the first epoch holds every sample exactly three times, in three different orders
    digests = sorted(volume.tobytes() for volume in first)
    assert digests == sorted(
        volume.tobytes() for volume in np.concatenate([first[: len(train)]] * 3)
    )
    assert len(set(digests)) == len(train)
    assert not np.array_equal(first[: len(train)], first[len(train) : 2 * len(train)])
    # a run resumed at epoch 1 gets the batches the uninterrupted run had there
    resumed = [x.numpy() for x, _ in data(1).take(3 * natural)]
    assert all(np.array_equal(a, b) for a, b in zip(resumed, batches[3 * natural :], strict=True))

    # fine-tuning (the cache and the originals): just over two passes' steps make it three
    originals = len(preprocessed_source(tiny_data["preprocessed"], ("train",), classes))
    one_pass = steps_per_epoch(len(train) + originals, 4)
    params = tiny_params.model_copy(deep=True)
    params.finetune.min_steps_per_epoch = 2 * one_pass + 1
    handed = []
    original = finetune._training_data

    def spy(*args, **kwargs):
        handed.append(inspect.signature(original).bind(*args, **kwargs).arguments)
        return original(*args, **kwargs)

    monkeypatch.setattr(finetune, "_training_data", spy)
    bundle = finetune.run(
        trained / "pretrained",
        tiny_data["augmented"],
        tiny_data["preprocessed"],
        tmp_path / "m",
        params,
    )
    assert bundle["steps_per_epoch"] == 3 * one_pass
    # and the batches it drew came in those passes
    assert handed[0].get("passes") == 3


def _encoder_weights(path) -> dict[str, list[np.ndarray]]:
    model = keras.saving.load_model(path, safe_mode=True)
    encoder = model if model.name == "encoder" else model.get_layer("encoder")
    return {layer.name: layer.get_weights() for layer in encoder.layers if layer.weights}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_frozen_blocks_keep_their_pretrained_weights(trained):
    pretrained = _encoder_weights(trained / "pretrained" / "encoder.keras")
    tuned = _encoder_weights(trained / "classifier" / "model.keras")
    assert _same(tuned["stem_conv"], pretrained["stem_conv"])  # frozen_blocks: 1
    assert not _same(tuned["stage2_block1_conv1"], pretrained["stage2_block1_conv1"])


def _with(params_dict: dict, section: str, **values):
    from voxelflow.params import parse_params

    data = json.loads(json.dumps(params_dict))
    data[section] = {**data.get(section, {}), **values}
    return parse_params(data)


def test_phase_two_unfreezes_blocks_with_a_balanced_sampler(
    trained, tiny_data, tiny_params_dict, tmp_path
):
    params = _with(
        tiny_params_dict,
        "finetune",
        epochs=1,
        phase2_epochs=1,
        frozen_blocks=2,
        unfreeze_blocks=1,
        balance="sampler",
        schedule="plateau",
        layer_decay=0.5,
    )
    bundle = finetune.run(
        trained / "pretrained",
        tiny_data["augmented"],
        tiny_data["preprocessed"],
        tmp_path / "classifier",
        params,
        summary_path=tmp_path / "finetune.json",
    )
    assert [phase["frozen_blocks"] for phase in bundle["phases"]] == [
        ["stem", "stage1_block1"],
        ["stem"],
    ]
    assert bundle["epochs_run"] == 2
    pretrained = _encoder_weights(trained / "pretrained" / "encoder.keras")
    tuned = _encoder_weights(tmp_path / "classifier" / "model.keras")
    assert _same(tuned["stem_conv"], pretrained["stem_conv"])
    summary = json.loads((tmp_path / "finetune.json").read_text())
    assert summary["phases"] == 2 and summary["epochs_run"] == 2
    assert 1 <= summary["best_epoch"] <= 2 and "best_val_loss" in summary
    if bundle["best_epoch"] == 2:  # the bundled epoch is phase 2's: stage1_block1 moved
        assert not _same(tuned["stage1_block1_conv1"], pretrained["stage1_block1_conv1"])


def test_encoder_weights_load_by_layer_name_and_mismatches_are_listed(trained, tiny_params):
    from voxelflow import models

    encoder = models.encoder_from_params(tiny_params.model, (16, 16, 16, 1))
    result = models.load_encoder_weights(encoder, trained / "classifier" / "model.keras")
    tuned = _encoder_weights(trained / "classifier" / "model.keras")
    assert result["layers"] == len(tuned)
    for layer in encoder.layers:
        if layer.weights:
            assert _same(layer.get_weights(), tuned[layer.name])
    wider = models.build_encoder((16, 16, 16, 1), "resnet", 8, [1, 1], "none")
    with pytest.raises(ValueError, match=r"stem_conv: shapes \[\(3, 3, 3, 1, 4\), \(4,\)\]"):
        models.load_encoder_weights(wider, trained / "pretrained" / "encoder.keras")
    deeper = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1, 1], "none")
    with pytest.raises(ValueError, match="stage3_block1_conv1: not in the file"):
        models.load_encoder_weights(deeper, trained / "pretrained" / "encoder.keras")


def test_supervised_pretraining_on_another_dataset_never_on_our_held_out_volumes(
    trained, tiny_data, tiny_params_dict, tmp_path
):
    import shutil

    from voxelflow.atomic import write_csv

    source = tmp_path / "source"
    shutil.copytree(tiny_data["preprocessed"], source)
    params = _with(tiny_params_dict, "pretrain", mode="supervised", source_dir=str(source))
    with pytest.raises(ValueError, match="in our validation or test split"):
        pretrain.run(tiny_data["preprocessed"], tmp_path / "pretrained", params)
    rows = [row for row in read_rows(source / "index.csv") if row["split"] == "train"]
    write_csv(source / "index.csv", rows, list(rows[0]))
    summary = pretrain.run(tiny_data["preprocessed"], tmp_path / "pretrained", params)
    assert summary["mode"] == "supervised" and summary["volumes"] == len(rows)
    assert summary["source_classes"] == ["normal", "lesion", "atrophy"]
    assert np.isfinite(summary["final_loss"])

    weights = str(tmp_path / "pretrained" / "encoder.keras")
    params = _with(tiny_params_dict, "pretrain", mode="none", weights=weights)
    summary = pretrain.run(tiny_data["preprocessed"], tmp_path / "copied", params)
    assert summary["weights"]["layers"] > 0
    first = _encoder_weights(tmp_path / "pretrained" / "encoder.keras")
    copied = _encoder_weights(tmp_path / "copied" / "encoder.keras")
    assert all(_same(copied[name], first[name]) for name in first)


def test_predict_reproduces_evaluate_with_the_bundles_own_preprocessing(
    trained, tiny_data, tmp_path, monkeypatch
):
    import gzip

    import yaml
    from typer.testing import CliRunner

    import voxelflow
    from voxelflow.cli import app

    evaluated = read_rows(trained / "metrics" / "predictions.csv")
    manifest = {row["id"]: row for row in read_rows(tiny_data["ingested"] / "manifest.csv")}
    files = [tiny_data["raw"] / manifest[row["id"]]["path"] for row in evaluated]
    # params.yaml now preprocesses differently; predict must use the bundle's spec instead
    monkeypatch.chdir(tmp_path)
    changed = {"preprocess": {"target_shape": [8, 8, 8], "normalization": "minmax"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed))
    good = next(path for path in files if path.name.endswith(".nii.gz"))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(good.read_bytes()))[:-200])
    (tmp_path / "notes.txt").write_text("not a scan")

    inputs = [*map(str, files), str(truncated), str(tmp_path / "notes.txt")]
    result = CliRunner().invoke(
        app,
        ["predict", str(trained / "classifier"), *inputs, "--out", "out.csv", "--batch-size", "4"],
    )
    assert result.exit_code == 0, result.output
    predicted = read_rows(tmp_path / "out.csv")
    assert [row["path"] for row in predicted] == [str(path.resolve()) for path in files]
    columns = [key for key in evaluated[0] if key.startswith("p_")] + ["predicted"]
    for mine, theirs in zip(predicted, evaluated, strict=True):
        assert {key: mine[key] for key in columns} == {key: theirs[key] for key in columns}
    rejected = {
        Path(row["path"]).name: row["reason"] for row in read_rows(tmp_path / "out.rejected.csv")
    }
    assert set(rejected) == {"truncated.nii.gz", "notes.txt"}
    assert "truncated" in rejected["truncated.nii.gz"]

    # the Python API, same numbers
    api = voxelflow.predict(trained / "classifier", files[:4], batch_size=4)
    assert [row["p_" + api.classes[0]] for row in api.rows] == [
        float(row["p_" + api.classes[0]]) for row in evaluated[:4]
    ]


def test_evaluate_with_test_time_augmentation(trained, tiny_data, tiny_params, tmp_path):
    params = tiny_params.model_copy(deep=True)
    params.evaluate.tta = True
    params.evaluate.tta_rotation_degrees = [5.0]
    result = evaluate.run(
        trained / "classifier", tiny_data["preprocessed"], tmp_path / "m", tmp_path / "p", params
    )
    assert result["tta"]["passes"] == [
        "identity",
        "flip0",
        "rotate0_+5",
        "rotate1_+5",
        "rotate2_+5",
    ]
    plain = json.loads((trained / "metrics" / "eval.json").read_text())
    assert result["balanced_accuracy"] == plain["balanced_accuracy"]  # reported beside it
    assert "confidence_intervals" in result["tta"]
    rows = read_rows(tmp_path / "m" / "predictions.csv")
    tta = np.array([[float(row[k]) for k in row if k.startswith("p_tta_")] for row in rows])
    assert tta.shape == (result["test_volumes"], 3) and np.allclose(tta.sum(axis=1), 1, atol=1e-4)


def test_from_scratch_trains_every_block_whatever_frozen_blocks_says(
    tiny_data, tiny_params, tmp_path
):
    params = tiny_params.model_copy(deep=True)
    params.pretrain.mode = "none"
    params.finetune.frozen_blocks = 2  # would pin random weights: not applied
    pretrain.run(tiny_data["preprocessed"], tmp_path / "pretrained", params)
    finetune.run(
        tmp_path / "pretrained",
        tiny_data["augmented"],
        tiny_data["preprocessed"],
        tmp_path / "scratch",
        params,
    )
    bundle = json.loads((tmp_path / "scratch" / "bundle.json").read_text())
    assert bundle["frozen_blocks"] == []
    initial = _encoder_weights(tmp_path / "pretrained" / "encoder.keras")
    tuned = _encoder_weights(tmp_path / "scratch" / "model.keras")
    assert not _same(tuned["stem_conv"], initial["stem_conv"])  # the stem trained too


def test_training_seed_changes_the_initial_weights_only(tiny_data, tiny_params, tmp_path):
    def encoder(training_seed):
        params = tiny_params.model_copy(deep=True)
        params.pretrain.mode = "none"
        params.training.seed = training_seed
        out = tmp_path / f"seed{training_seed}"
        pretrain.run(tiny_data["preprocessed"], out, params)
        return [w.numpy() for w in keras.saving.load_model(out / "encoder.keras").weights]

    default = encoder(None)
    same = encoder(tiny_params.seed)  # training.seed = seed: the same run
    other = encoder(tiny_params.seed + 1)
    assert all(np.array_equal(a, b) for a, b in zip(default, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(default, other, strict=True))
