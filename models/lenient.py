"""SimpleTool's reference-server rules for reading a head's text (the ``lenient`` assembly mode).

What the authors' ``rt_server.py`` (``POST /v1/function_call``, SimpleTool repository) does with a
decoded head text before it hands arguments to a client, restated as small functions. Written from
reading that server, not copied from it. The rules, in the order the server applies them:

1. The text is trimmed; if it then ends with a stop marker (``<|null|>``, a closing tag such as
   ``</arg2>``, or ``<|im_end|>``), that one marker is cut and the rest trimmed again.
2. Empty text or ``<|null|>`` means "omitted".
3. Text of digits only (``str.isdigit``) becomes an ``int``; text that is digits after dropping the
   leading ``-`` signs and one ``.`` becomes a ``float`` (so ``-3`` reads as ``-3.0``, ``.5`` as 0.5,
   ``1.`` as 1.0; ``1e3`` and ``+1`` are not numbers to it).
4. Any other text becomes a string, lowercased.

The server itself never looks at the schema: it does not check the function name, maps slot *i* to
the *i*-th name of the union of all offered tools' parameters, and hands back whatever rule 3 or 4
gave. ``tickcall.models.assembly`` uses these readings first and validates like strict mode (its
docstring has the side-by-side table). Invariant: these functions never raise on model output.
"""

from __future__ import annotations

import re

from tickcall.models.format import NULL

# One trailing stop marker, as the server's stop strings: <|null|>, </content>, </function>, </argN>, <|im_end|>
_STOP_SUFFIX = re.compile(r"(?:<\|null\|>|</content>|</function>|</arg\d+>|<\|im_end\|>)\Z")


def clean_text(text: str | None) -> str:
    """Rule 1: trimmed, one trailing stop marker cut, trimmed again."""
    out = (text or "").strip()
    return _STOP_SUFFIX.sub("", out, count=1).strip()


def is_omitted(clean: str) -> bool:
    """Rule 2, on a :func:`clean_text` result."""
    return clean in ("", NULL)


def server_value(clean: str) -> int | float | str:
    """Rules 3 and 4 on a :func:`clean_text` result: the value the server would hand to its client.

    Where the server's own conversion raises (``--3``, or ``²``, which ``isdigit`` accepts and ``int``
    refuses; the server then fails the whole request), the text stays a lowercased string: a
    reading that cannot be a number, so a number parameter refuses it with a reason."""
    try:
        if clean.isdigit():
            return int(clean)
        if clean.lstrip("-").replace(".", "", 1).isdigit():
            return float(clean)
    except ValueError:  # also int()'s limit on very long digit strings
        pass
    return clean.lower()
