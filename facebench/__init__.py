"""facebench: a PyTorch Lightning benchmark suite for face attribute prediction.

One installed package, four layers, each importing only the ones below it (``tests/test_layers.py``)::

    facebench.benchmarks         (folder benchmarks/)         runner, CLI, reports, analyses
    facebench.lightning_modules  (folder lightning_modules/)  methods, losses, metrics, weightings
    facebench.datamodules        (folder datamodules/)        one LightningDataModule per dataset
    facebench.core               (folder facebench/core/)     what every layer shares: tasks, config checks,
                                                              atomic I/O, the Registry, paths

``pyproject.toml`` maps the three top-level folders of the repository onto ``facebench.*``
(setuptools ``package-dir``), so the wheel installs this one top-level package.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("facebench")
except _metadata.PackageNotFoundError:   # a source tree that was never installed
    __version__ = "0+unknown"
