"""Import every datamodule module so that each registers its name."""

from datamodules import celeba, synthfaces  # noqa: F401
from datamodules import fer, folder, lfwa, mixture, multirater, utkface  # noqa: F401
