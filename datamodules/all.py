"""Import every datamodule module so that each registers its name."""

from datamodules import celeba  # noqa: F401
