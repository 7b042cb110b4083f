"""Hostile image files and the script that builds them (make_corpus.py)."""
