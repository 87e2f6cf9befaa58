"""voxelflow: 3D CNN classifiers for volumetric medical images, as a DVC + Prefect pipeline."""

__version__ = "0.1.0"


def predict(bundle_dir, inputs, out=None, batch_size: int = 16, progress: bool = False):
    """Predicts NIfTI files with a model bundle: see :func:`voxelflow.predictor.predict`
    (imported on first use, so ``import voxelflow`` stays light)."""
    from voxelflow.predictor import predict as _predict

    return _predict(bundle_dir, inputs, out, batch_size, progress)
