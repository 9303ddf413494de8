"""Operations: backups and restores, metrics, firmware bundles."""
