"""One module per DVC stage (`python -m stages.<name>`): pure helpers, `run()`, `main()`."""

from voxelflow.runtime import quiet_environment

quiet_environment()  # before any stage imports TensorFlow
