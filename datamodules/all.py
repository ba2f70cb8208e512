"""Import every datamodule module so that each registers its name."""

from facebench.datamodules import celeba, synthfaces  # noqa: F401
from facebench.datamodules import fer, folder, lfwa, mixture, multirater, utkface  # noqa: F401
