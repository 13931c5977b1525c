"""What "success" means for one result record: a JMESPath expression, never `eval`.

`success` (a field), `!starts_with(prediction, '[ERROR]')`, `status == 'ok' && score > \\`0\\``: the
record is a success when the expression's value is truthy in JMESPath's sense (not false, null, "",
[] or {}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# No `error` and no `success: false`: what a record means when the user said nothing.
DEFAULT_SUCCESS = "success != `false` && !error"


class SuccessExpressionError(ValueError):
    """The expression is not JMESPath; one line for the user."""


def compile_success(expression: str) -> Callable[[Any], bool]:
    """record -> is it a success; raises SuccessExpressionError for an expression that does not parse."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise SuccessExpressionError(f"success expression {expression!r} is not JMESPath: "
                                     f"{' '.join(str(exc).split())}") from None

    def is_success(record: Any) -> bool:
        try:
            value = compiled.search(record)
        except JMESPathError:  # a function given a value of the wrong type (starts_with on a number)
            return False
        return value not in (False, None, "", [], {})

    return is_success
