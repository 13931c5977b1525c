"""resumedoctor: make resuming a long training run safe.

    import resumedoctor

    report = resumedoctor.diagnose("out/")     # what `resumedoctor diagnose out/` says
    trainer.train(resume_from_checkpoint=resumedoctor.resume_point("out/"))

The names below load on first use (resumedoctor.api, the callbacks), so that `import resumedoctor`
and `resumedoctor --version` stay light: no torch, transformers, numpy or wandb until a check needs them.
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms of every start-up)

__version__ = "0.1.0"

_API = "resumedoctor.api"
_LAZY = {
    "diagnose": _API,
    "undo": _API,
    "seal": _API,
    "resume_point": _API,
    "verdict": _API,
    "NoResumePoint": _API,
    "ResumeDoctorError": _API,
    "Report": "resumedoctor.engine.runner",
    "SealCallback": "resumedoctor.integrations.seal.callback",
    "CurriculumCallback": "resumedoctor.integrations.curriculum.callback",
}

__all__ = [
    "CurriculumCallback",
    "NoResumePoint",
    "Report",
    "ResumeDoctorError",
    "SealCallback",
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
        ResumeDoctorError,
        diagnose,
        fix,
        resume_point,
        seal,
        undo,
        verdict,
    )
    from resumedoctor.engine.runner import Report
    from resumedoctor.integrations.curriculum.callback import CurriculumCallback
    from resumedoctor.integrations.seal.callback import SealCallback


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resumedoctor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "fix"])


class _Package(types.ModuleType):
    """`resumedoctor.fix` is the API's function, though `resumedoctor/fix/` is a subpackage too.

    Importing a subpackage binds its name on the package (`resumedoctor.fix = <module>`), which would hide
    the function after the first fix. The subpackage stays where imports find it, in sys.modules:
    `from resumedoctor.fix.planner import ...` and `from resumedoctor.fix import planner` work as before.
    """

    @property
    def fix(self) -> Any:
        from resumedoctor.api import fix

        return fix

    @fix.setter
    def fix(self, subpackage: types.ModuleType) -> None:
        pass  # the import system's binding of the subpackage (it stays in sys.modules)


sys.modules[__name__].__class__ = _Package
