"""resumedoctor: make resuming a long training run safe.

    import resumedoctor

    report = resumedoctor.diagnose("out/")     # what `resumedoctor diagnose out/` says
    trainer.train(resume_from_checkpoint=resumedoctor.resume_point("out/"))

The names below load on first use (resumedoctor.api, the callbacks), so that `import resumedoctor`
and `resumedoctor --version` stay light: no torch, transformers, numpy or wandb until a check needs them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms of every start-up)

__version__ = "0.1.0"

_API = "resumedoctor.api"
_LAZY = {
    "diagnose": _API,
    "fix": _API,
    "undo": _API,
    "seal": _API,
    "resume_point": _API,
    "verdict": _API,
    "NoResumePoint": _API,
    "PassedOverCheckpoints": _API,
    "ResumeDoctorError": _API,
    "Report": "resumedoctor.engine.runner",
    "SealCallback": "resumedoctor.integrations.seal.callback",
    "CurriculumCallback": "resumedoctor.integrations.curriculum.callback",
}

# The callbacks (they import transformers) stay out of `from resumedoctor import *`.
__all__ = [
    "NoResumePoint",
    "PassedOverCheckpoints",
    "Report",
    "ResumeDoctorError",
    "__version__",
    "diagnose",
    "fix",
    "resume_point",
    "seal",
    "undo",
    "verdict",
]

if TYPE_CHECKING:
    from typing import Any

    from resumedoctor.api import (
        NoResumePoint,
        PassedOverCheckpoints,
        ResumeDoctorError,
        diagnose,
        fix,
        resume_point,
        seal,
        undo,
        verdict,
    )
    from resumedoctor.engine.runner import Report
    from resumedoctor.integrations.curriculum.callback import (
        CurriculumCallback as CurriculumCallback,
    )
    from resumedoctor.integrations.seal.callback import SealCallback as SealCallback


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resumedoctor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

