"""Folder put first on PYTHONPATH during a run so that every Python process loads the probe."""
