"""audio_dcls: AudioSet tagging with DCLS."""
from . import models  # registers the audio models in timm
