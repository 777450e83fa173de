"""fersynth: synthetic data for facial expression recognition, measured honestly."""

__version__ = "0.1.0"
