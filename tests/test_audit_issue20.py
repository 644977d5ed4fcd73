"""Issue 20 items that had no test of their own (found by the s18 audit, /tmp/s18/audit.md).

* The door's default template is the server variant of the engine's template (``v1`` -> ``v1-server``,
  ``v2`` -> ``v2-server``, ``compact`` stays): only the v2 case was checked (``/health`` of a v2 engine).
* The ``v1-server`` prompt *through the door*: tests/test_format_server_variants.py checks the template's
  bytes, tests/test_http_door.py the v2 server's prompt through the door; here a request asking for
  ``v1-server`` makes the engine prefill exactly the golden v1 server prompt (environment as JSON
  strings, the last 6 history items, the shortened head block). Real uvicorn, httpx and ZMQ service.
"""

from __future__ import annotations

import httpx
import pytest
from test_format_server_variants import ENV, HISTORY, PONG, PONG_LINE, QUERY, V1_SERVER_SYSTEM
from test_http_door import Door, RecordingEngine
from tickcall.agent.engines import build_engine
from tickcall.agent.http_door import default_template


@pytest.mark.parametrize(
    ("engine_template", "door_template"),
    [("v1", "v1-server"), ("v2", "v2-server"), ("compact", "compact"), (None, "v2-server")],
)
def test_the_door_defaults_to_the_server_variant(engine_template, door_template):
    info = {} if engine_template is None else {"default_template": engine_template}
    assert default_template(info) == door_template


def test_the_engine_gets_the_v1_servers_prompt_byte_for_byte():
    engine = RecordingEngine(build_engine({"backend": "random", "seed": 0}))
    d = Door(engine)
    try:
        body = {
            "messages": [{"role": "user", "content": QUERY}],
            "tools": [PONG],
            "environment": ENV,
            "history": HISTORY,
            "system": "ignored in v1",
            "template": "v1-server",
        }
        r = httpx.post(f"{d.url}/v1/function_call", json=body, timeout=30)
        assert r.status_code == 200, r.text
        [(handle, turn)] = engine.seen
        reg = engine.inner.registration(handle)
        assert reg.template.name == "v1-server"
        assert reg.prefix_text + reg.template.suffix(turn) == (
            V1_SERVER_SYSTEM + PONG_LINE + "\n<|im_end|>\n"
            "<|im_start|>user\n"
            'environment: ["ball_y=120", "paddle_y=200", "diff=-80", "ball_moving_towards", "ball_vy=up"]\n'
            "history: [stay, down, fb:stay, up, down, stay]\n"
            "\n" + QUERY + "<|im_end|>\n<|im_start|>assistant\n"
        )
    finally:
        d.close()
