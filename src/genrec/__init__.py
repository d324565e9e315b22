"""genrec: Generative Recommenders (HSTU) — library, CLI and service."""

__version__ = "0.1.0"
