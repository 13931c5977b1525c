"""What "success" means for one result record: a JMESPath expression, never `eval`.

`success` (a field), `!starts_with(prediction, '[ERROR]')`, `status == 'ok' && score > \\`0\\``: the
record is a success when the expression's value is truthy in JMESPath's sense (not false, null, "",
[] or {}; 0 is truthy). Where the expression fails on a record (a function given a value of the wrong
type) that record is not judged: neither a success nor a failure (`compile_judge`).

A ledger has millions of records and jmespath's interpreter costs ~6 us per record, more than reading
it. The common subset (fields, `a.b`, `@`, literals, `!`, `&&`, `||`, comparisons, `starts_with`,
`ends_with`, `contains`, `length`) is compiled from jmespath's own parse tree into Python closures with
jmespath's semantics (tests compare both on many records); any other expression runs in jmespath.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from numbers import Number
from typing import Any

# No `error` and no `success: false`: what a record means when the user said nothing.
DEFAULT_SUCCESS = "success != `false` && !error"


class SuccessExpressionError(ValueError):
    """The expression is not JMESPath; one line for the user."""


class _WrongType(Exception):
    """A function given a value of a type it does not take (jmespath raises an error there)."""


class _NotCompiled(Exception):
    """Outside the compiled subset: jmespath evaluates the expression."""


MAX_EXPRESSION = 4096  # characters: a success test is a line; jmespath's parser recurses per operator


def compile_success(expression: str) -> Callable[[Any], bool]:
    """record -> is it a success (False also where the expression fails on the record: see
    `compile_judge`); raises SuccessExpressionError for an expression that does not parse."""
    judge = compile_judge(expression)
    return lambda record: judge(record) is True


def compile_judge(expression: str) -> Callable[[Any], bool | str]:
    """record -> True (a success), False (a failure) or, where the expression fails on the record (a
    function given a value of a type it does not take: `abs(text)`, `length(id)` on a number), the
    error as a string: that record's success was not judged, it is neither."""
    evaluate, errors, is_bool = _compiled(expression)

    def judge(record: Any) -> bool | str:
        try:
            value = evaluate(record)
        except errors as exc:
            return _error_text(exc)
        return value if is_bool else truthy(value)

    return judge


def _compiled(expression: str) -> tuple[Callable[[Any], Any], tuple[type[BaseException], ...], bool]:
    """(evaluate, the errors it raises on a record, does it always return a bool)."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    if len(expression) > MAX_EXPRESSION:
        raise SuccessExpressionError(f"success expression ({len(expression)} characters) is not JMESPath "
                                     f"this tool reads: too long (at most {MAX_EXPRESSION})")
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise SuccessExpressionError(f"success expression {expression!r} is not JMESPath: "
                                     f"{' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SuccessExpressionError(f"success expression ({len(expression)} characters) is not JMESPath "
                                     "this tool reads: too deeply nested") from None
    try:
        evaluate = compile_node(compiled.parsed)
        errors: tuple[type[BaseException], ...] = (_WrongType, TypeError, RecursionError)
    except (_NotCompiled, RecursionError):
        return compiled.search, (JMESPathError, TypeError, ValueError, RecursionError), False
    return evaluate, errors, returns_bool(compiled.parsed)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, _WrongType):
        return f"{exc.args[0]}() given a value of another type"
    if isinstance(exc, RecursionError):
        return "a value nested too deeply"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


BOOL_FUNCTIONS = ("starts_with", "ends_with", "contains")


def returns_bool(node: dict) -> bool:
    """Is the node's value always true or false (so its truth needs no test)?"""
    kind = node["type"]
    return (kind == "not_expression" or (kind == "comparator" and node["value"] in ("eq", "ne"))
            or (kind == "function_expression" and node["value"] in BOOL_FUNCTIONS))


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, "", [] and {} are false; everything else (0 too) is true."""
    if value is None or value is False:
        return False
    kind = type(value)
    if kind is str or kind is list or kind is dict:
        return bool(value)
    return True


def _number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def equals(x: Any, y: Any) -> bool:
    """jmespath's `==`: 0 and 1 are never equal to false and true."""
    if _number(x) and x in (0, 1):
        return not isinstance(y, bool) and x == y
    if _number(y) and y in (0, 1):
        return not isinstance(x, bool) and x == y
    return x == y


ORDER = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


def compile_node(node: dict) -> Callable[[Any], Any]:
    """A jmespath parse-tree node as a closure; _NotCompiled outside the subset."""
    kind = node["type"]
    if kind in _SIMPLE:
        return _SIMPLE[kind](node)
    children = [compile_node(child) for child in node["children"]]
    if kind == "subexpression":
        return _chain(children)
    if kind == "not_expression":
        (child,) = children
        if returns_bool(node["children"][0]):
            return lambda value: not child(value)
        return lambda value: not truthy(child(value))
    if kind in ("and_expression", "or_expression"):
        return _logic(kind == "and_expression", *children)
    if kind == "comparator":
        return _comparator(node["value"], *children)
    if kind == "function_expression":
        return _affix_of_field(node) or _function(node["value"], children)
    raise _NotCompiled(kind)


def _field(node: dict) -> Callable[[Any], Any]:
    name = node["value"]

    def field(value: Any) -> Any:
        try:
            return value.get(name)
        except AttributeError:
            return None

    return field


def _literal(node: dict) -> Callable[[Any], Any]:
    constant = node["value"]
    return lambda value: constant


_SIMPLE = {"field": _field, "literal": _literal, "current": lambda node: lambda value: value}


def _chain(children: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def chain(value: Any) -> Any:
        for child in children:
            value = child(value)
        return value

    return chain


def _logic(is_and: bool, left: Callable, right: Callable) -> Callable[[Any], Any]:
    if is_and:
        def both(value: Any) -> Any:
            first = left(value)
            return right(value) if truthy(first) else first
        return both

    def either(value: Any) -> Any:
        first = left(value)
        return first if truthy(first) else right(value)
    return either


def _comparator(op: str, left: Callable, right: Callable) -> Callable[[Any], Any]:
    if op == "eq":
        return lambda value: equals(left(value), right(value))
    if op == "ne":
        return lambda value: not equals(left(value), right(value))
    order = ORDER[op]

    def compare(value: Any) -> Any:
        a, b = left(value), right(value)
        if not ((_number(a) or isinstance(a, str)) and (_number(b) or isinstance(b, str))):
            return None
        return order(a, b)  # a string against a number raises TypeError, as in jmespath

    return compare


def _affix_of_field(node: dict) -> Callable[[Any], bool] | None:
    """`starts_with(field, 'literal')` (and ends_with) in one closure: the common success test."""
    args = node["children"]
    if (node["value"] not in ("starts_with", "ends_with") or len(args) != 2 or args[0]["type"] != "field"
            or args[1]["type"] != "literal" or not isinstance(args[1]["value"], str)):
        return None
    name, affix, starts = args[0]["value"], args[1]["value"], node["value"] == "starts_with"

    def affixed(value: Any) -> bool:
        try:
            text = value.get(name)
        except AttributeError:
            text = None
        if not isinstance(text, str):
            raise _WrongType(node["value"])
        return text.startswith(affix) if starts else text.endswith(affix)

    return affixed


def _function(name: str, args: list[Callable]) -> Callable[[Any], Any]:
    if name in ("starts_with", "ends_with") and len(args) == 2:
        subject, affix = args
        method = str.startswith if name == "starts_with" else str.endswith

        def affixed(value: Any) -> bool:
            text, part = subject(value), affix(value)
            if not isinstance(text, str) or not isinstance(part, str):
                raise _WrongType(name)
            return method(text, part)
        return affixed
    if name == "contains" and len(args) == 2:
        subject, search = args

        def contains(value: Any) -> bool:
            within = subject(value)
            if not isinstance(within, (list, str)):
                raise _WrongType(name)
            return search(value) in within
        return contains
    if name == "length" and len(args) == 1:
        (subject,) = args

        def length(value: Any) -> int:
            sized = subject(value)
            if not isinstance(sized, (str, list, dict)):
                raise _WrongType(name)
            return len(sized)
        return length
    raise _NotCompiled(name)
