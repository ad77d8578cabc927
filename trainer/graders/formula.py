"""The multi grader's `calculate_output`: arithmetic over the sub-graders' rewards.

OpenAI's operators (`+ - * /`, `^` for power) and functions (min, max, abs, floor, ceil, exp,
sqrt, log), numbers and the sub-graders' names; nothing else. Parsed with Python's `ast`
(with `^` read as power) and evaluated by walking the tree: no `eval`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
MAX_CHARS = 2000
MAX_DEPTH = 64  # evaluation recurses once per level: deeper trees would overflow the stack


class FormulaError(ValueError):
    """A formula that does not parse, or names what is not a sub-grader or function."""


class FormulaValueError(ArithmeticError):
    """A formula that parsed but could not be computed for these rewards (division by zero, ...)."""


def parse(text: str, names: set[str]) -> ast.expr:
    """The formula's tree; FormulaError when it is not one over `names`."""
    if len(text) > MAX_CHARS:
        raise FormulaError(f"the formula is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        raise FormulaError(f"{text!r} is not an arithmetic formula") from None
    for node in ast.walk(tree):
        _check(node, names)
    if _depth(tree) > MAX_DEPTH:
        raise FormulaError(f"the formula nests deeper than {MAX_DEPTH} levels")
    return tree


def _depth(tree: ast.AST) -> int:
    """How deep the tree goes, counted without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.Name):
        if node.id not in names and node.id not in FUNCTIONS:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"{node.id!r} is not one of the graders ({known})")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise FormulaError(f"only {', '.join(FUNCTIONS)} may be called")
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError("only numbers may be written in the formula")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError("the operators are + - * / and ^")
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise FormulaError("the operators are + - * / and ^")
    elif not isinstance(node, ast.Load | ast.operator | ast.unaryop):
        raise FormulaError(f"{type(node).__name__} is not allowed in the formula")


def evaluate(tree: ast.expr, values: Mapping[str, float]) -> float:
    try:
        result = float(_value(tree, values))
    except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        raise FormulaValueError(str(exc) or type(exc).__name__) from None
    if not math.isfinite(result):
        raise FormulaValueError("the result is not a finite number")
    return result


def _value(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left, values), _value(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise OverflowError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return float(FUNCTIONS[node.func.id](*(_value(a, values) for a in node.args)))
    raise FormulaValueError(f"{type(node).__name__} cannot be computed")
