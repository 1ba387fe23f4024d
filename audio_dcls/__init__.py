"""audio_dcls: AudioSet tagging with DCLS.

``from audio_dcls import Tagger`` gives the one-call Python tagger
(:class:`audio_dcls.tagger.Tagger`); it is imported on first use, so
``import audio_dcls`` stays light.
"""
from . import models  # registers the audio models in timm


def __getattr__(name: str):
    if name in ("Tagger", "WindowOutputs"):
        from . import tagger

        return getattr(tagger, name)
    raise AttributeError(f"module 'audio_dcls' has no attribute {name!r}")


__all__ = ["Tagger", "WindowOutputs", "models"]
