"""resumedoctor: make resuming a long training run safe."""

__version__ = "0.1.0"

# The callbacks need transformers; they load on first use so that `import resumedoctor` stays light.
_LAZY = {"SealCallback": "resumedoctor.integrations.seal.callback", "CurriculumCallback": "resumedoctor.integrations.curriculum.callback"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resumedoctor' has no attribute {name!r}")
