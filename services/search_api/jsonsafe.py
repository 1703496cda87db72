"""Input that JSON cannot carry, and output that must not show the server's paths.

* Python's ``json`` reads ``NaN``, ``Infinity``, ``-Infinity`` and ``1e999`` (as inf), and
  ``"\\ud800"`` (a lone UTF-16 surrogate) into values that are not JSON (RFC 8259 section 6
  has no non-finite numbers) or not Unicode text: echoed back in a validation error they
  made the response fail to encode (a 500), and a lone surrogate reached the tokenizer.
  :class:`StrictJSONRoute` refuses such bodies with a 422 that names the field
  (:func:`non_json_errors`), before the request model or the micro-batcher sees them;
  :func:`json_safe` makes anything echoed encodable whatever slips through.
* :func:`redact_paths` / :func:`redact` reduce absolute paths to their last component, for
  answers anyone may read (``/readyz``, ``/index`` without the admin key, 503 reasons).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Coroutine

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

NON_FINITE_MSG = "non-finite number (NaN, Infinity or a number out of the double range) is not valid JSON"
MAX_REPORTED = 10


def _surrogate(s: str) -> str | None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(s[e.start]):04x}"
    return None


def non_json_errors(obj: Any, loc: tuple = ("body",)) -> list[dict[str, Any]]:
    """Validation errors (FastAPI's shape) for every non-finite number and every string (key or
    value) holding a lone surrogate in a parsed JSON body; empty when the body is clean.

    Returns:
        at most :data:`MAX_REPORTED` errors ``{"type", "loc", "msg", "input"}``; ``loc`` is
        ``("body", key or index, ...)``; ``input`` is JSON-safe.
    """
    out: list[dict[str, Any]] = []

    def walk(v: Any, where: tuple) -> None:
        if len(out) >= MAX_REPORTED:
            return
        if isinstance(v, float) and not math.isfinite(v):
            out.append({"type": "finite_number", "loc": where, "msg": NON_FINITE_MSG, "input": json_safe(v)})
        elif isinstance(v, str):
            bad = _surrogate(v)
            if bad:
                out.append({
                    "type": "string_unicode", "loc": where, "input": json_safe(v),
                    "msg": f"string holds a lone surrogate ({bad}), which is not Unicode text",
                })
        elif isinstance(v, dict):
            for k, item in v.items():
                bad = _surrogate(k) if isinstance(k, str) else None
                if bad:
                    out.append({
                        "type": "string_unicode", "loc": (*where, json_safe(k)), "input": json_safe(k),
                        "msg": f"key holds a lone surrogate ({bad}), which is not Unicode text",
                    })
                    continue
                walk(item, (*where, k))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, (*where, i))

    walk(obj, tuple(loc))
    return out


def json_safe(obj: Any, _depth: int = 0) -> Any:
    """``obj`` made encodable by a strict JSON encoder (``allow_nan=False``, UTF-8).

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; lone
    surrogates in strings (keys too) become ``\\udXXX`` escapes; tuples become lists; other
    objects their ``str``; nesting deeper than 32 levels becomes ``"..."``.
    """
    if _depth > 32:
        return "..."
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace").decode("utf-8") if _surrogate(obj) else obj
    if isinstance(obj, dict):
        return {str(json_safe(k if isinstance(k, str) else str(k), _depth + 1)): json_safe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in obj]
    return json_safe(str(obj), _depth + 1)


class StrictJSONRoute(APIRoute):
    """An APIRoute that refuses JSON bodies holding non-finite numbers or lone surrogates
    with a 422 naming each field, before FastAPI validates the body (FastAPI's documented
    "custom APIRoute class" hook; the parsed body is cached on the request and reused)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request.headers.get("content-type")):
                try:
                    body = await request.json() if await request.body() else None
                except Exception:  # noqa: BLE001 - not JSON: FastAPI's own handling answers it
                    body = None
                errors = non_json_errors(body) if body is not None else []
                if errors:
                    raise RequestValidationError(errors)
            return await handler(request)

        return strict_handler


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without a content type as JSON
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


# an absolute POSIX path: a "/" not preceded by a word character or a dot (so "../x" and
# "a/b" are left alone), then its directories; the last component is kept
_ABS_DIRS = re.compile(r"(?<![\w.~/-])/(?:[^/\s'\"`()\[\]{},;:]+/)+")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path reduced to its last component
    (``/srv/idx/versions/v1/index.faiss: bad`` -> ``index.faiss: bad``)."""
    return _ABS_DIRS.sub("", text)


def redact(obj: Any) -> Any:
    """:func:`redact_paths` applied to every string in a JSON-like value (keys kept)."""
    if isinstance(obj, str):
        return redact_paths(obj)
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
