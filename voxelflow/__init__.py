"""voxelflow: 3D CNN classifiers for volumetric medical images, as a DVC + Prefect pipeline."""

__version__ = "0.1.0"
