"""Deprecated alias kept for scripts and recipes written before the layout by concern.

`from resumedoctor.curriculum import CurriculumCallback` and the recipe path
`resumedoctor.curriculum.CurriculumCallback` keep working; the home is
resumedoctor.integrations.curriculum.callback, and the stable name is `resumedoctor.CurriculumCallback`.
"""

import warnings

from resumedoctor.integrations.curriculum.callback import CurriculumCallback

__all__ = ["CurriculumCallback"]

warnings.warn("resumedoctor.curriculum is deprecated: use `from resumedoctor import CurriculumCallback` "
              "(in a recipe: resumedoctor.CurriculumCallback)", DeprecationWarning, stacklevel=2)
