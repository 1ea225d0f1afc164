"""The demo: a synthetic shop whose users choose by look and words (shop.py), and `mahn demo`, the whole
pipeline on it in one command (pipeline.py)."""
