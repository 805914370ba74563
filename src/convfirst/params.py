"""Checking notebook parameters, and choosing between measuring afresh and replaying recorded data.

Every notebook has a ``parameters`` cell (papermill) with at least ``mode`` and ``gpu``:

- ``mode="auto"``: measure on the GPU if one is present, otherwise replay ``data/`` (the default);
- ``mode="replay"``: always replay the measurements recorded for ``gpu``;
- ``mode="measure"``: measure afresh; a clear error if no CUDA GPU is present.

Bad values raise :class:`ParameterError` naming the parameter and the allowed values.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

MODES = ("auto", "replay", "measure")
DTYPES = ("bfloat16", "float16")


class ParameterError(ValueError):
    """A notebook or function parameter has a value outside what is allowed."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ParameterError(f"parameter {name}={value!r} is not allowed; choose one of {allowed}")
    return value


def check_choices(name: str, values: Sequence[Any], allowed: Iterable[Any]) -> list:
    allowed = list(allowed)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ParameterError(f"parameter {name} must be a list, got {values!r}")
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ParameterError(f"parameter {name}: {bad or 'empty list'} not allowed; choose from {allowed}")
    return list(values)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ParameterError(f"parameter {name}={value!r} must be a positive integer")
    return value


def check_positive_ints(name: str, values: Sequence[Any]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
        raise ParameterError(f"parameter {name} must be a non-empty list of positive integers, got {values!r}")
    return [check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values)]


def resolve_mode(mode: str) -> str:
    """'measure' or 'replay' for the requested ``mode`` on this machine."""
    import torch

    check_choice("mode", mode, MODES)
    has_gpu = torch.cuda.is_available()
    if mode == "measure" and not has_gpu:
        raise ParameterError("parameter mode='measure' needs a CUDA GPU and none is present; "
                             "use mode='replay' (or 'auto') to replay the recorded data")
    if mode == "auto":
        return "measure" if has_gpu else "replay"
    return mode


def mode_banner(mode: str, gpu: str, sources: Sequence[str] = ()) -> str:
    """A one-paragraph Markdown note saying whether this page measured afresh or replayed recorded data."""
    if mode == "measure":
        import torch

        name = torch.cuda.get_device_name(0)
        text = f"**Measured afresh** on this build's GPU ({name}) when the page was executed."
    else:
        text = f"**Replayed** from measurements recorded on `{gpu}`; no GPU was used to build this page."
    if sources:
        text += " Data: " + ", ".join(f"`{s}`" for s in sources) + "."
    return text


def show_mode(mode: str, gpu: str, sources: Sequence[str] = ()) -> None:
    """Display :func:`mode_banner` in a notebook (plain print outside IPython)."""
    text = mode_banner(mode, gpu, sources)
    try:
        from IPython.display import Markdown, display

        display(Markdown("> " + text))
    except Exception:
        print(text)
