"""Fuzz targets (targets.py), the atheris driver (_driver.py), one harness per decoder."""
