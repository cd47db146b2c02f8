"""Paper-scale presets (ReFINE, arXiv 2602.16704): one file per model x stage."""
