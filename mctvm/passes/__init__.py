"""Relax passes of mctvm, one per file; pipeline.py lists them in order."""
