"""facebench datamodules: one file per dataset, each holding its ``Dataset`` and ``LightningDataModule``."""
