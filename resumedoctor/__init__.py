"""resumedoctor: make resuming a long training run safe."""

__version__ = "0.1.0"
