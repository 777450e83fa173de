"""fersynth: synthetic data for facial expression recognition, measured honestly.

`fersynth.Predictor` (from `fersynth.predictor`) is the one inference path: images in,
class probabilities out, with a checkpoint's recorded preprocessing."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy, so that `import fersynth` (and the CLI) does not load torch
    if name == "Predictor":
        from fersynth.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'fersynth' has no attribute {name!r}")
