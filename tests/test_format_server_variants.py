"""Golden prompts of SimpleTool's HTTP servers: the ``v1-server`` and ``v2-server`` template variants.

The expected strings are written out here by hand from reading the servers' prompt code (``rt_server.py``
and its later v1/v2 server in the SimpleTool repository): nothing of theirs is imported or copied.
The training-time ``v1``/``v2`` templates keep their own goldens in tests/test_format.py.
"""

from __future__ import annotations

import pytest
from tickcall.models.format import SERVER_VARIANTS, TEMPLATES, Turn, get_template
from tickcall.models.tools import normalize_tools

# The Pong demo's tool, as its page sends it (wrapped, key order of the page).
PONG = {
    "type": "function",
    "function": {
        "name": "move",
        "description": "Move paddle vertically to intercept ball",
        "parameters": {
            "type": "object",
            "properties": {
                "direction": {
                    "type": "string",
                    "enum": ["up", "down", "stay"],
                    "description": "up=decrease Y, down=increase Y, stay=hold position",
                }
            },
            "required": ["direction"],
        },
    },
}
PONG_LINE = (
    '{"type": "function", "function": {"name": "move", "description": "Move paddle vertically to intercept '
    'ball", "parameters": {"type": "object", "properties": {"direction": {"type": "string", "enum": ["up", '
    '"down", "stay"], "description": "up=decrease Y, down=increase Y, stay=hold position"}}, "required": '
    '["direction"]}}}'
)
# A bare BFCL-style tool: the servers write it as given (no wrapper, "dict"/"float" kept).
BFCL = {
    "name": "set_speed",
    "description": "Set the speed.",
    "parameters": {"type": "dict", "properties": {"value": {"type": "float"}}, "required": ["value"]},
}
BFCL_LINE = (
    '{"name": "set_speed", "description": "Set the speed.", "parameters": {"type": "dict", "properties": '
    '{"value": {"type": "float"}}, "required": ["value"]}}'
)
ENV = ["ball_y=120", "paddle_y=200", "diff=-80", "ball_moving_towards", "ball_vy=up"]
HISTORY = ["up", "up", "stay", "down", "fb:stay", "up", "down", "stay"]  # 8 items: the servers keep 6
QUERY = "Pong AI. Ball is 80px ABOVE paddle. Move UP. Choose: up/down/stay"

V1_SERVER_SYSTEM = (
    "<|im_start|>system\n"
    "You are a multi-head parallel function calling model. \n"
    "## Output Heads\n"
    "\n"
    "**Head 0 - <content>**: Natural language response\n"
    "- Format: <content>response text</content>\n"
    "\n"
    "**Head 1 - <function>**: Function names to call\n"
    "- Format: <function>name</function>\n"
    "\n"
    "**Head 2-7 - <arg1>-<arg6>**: Function arguments by position\n"
    "- Format: <argN>value</argN> \n"
    "- If Unnecessary: <argN><|null|></argN>\n"
    "\n"
    "## Available Tools:\n"
    "\n"
)
DEFAULT_SYSTEM = (
    "You are a real-time function calling assistant. Convert user commands into function calls using the "
    "available tools."
)


def test_v1_server_golden_pong():
    t = get_template("v1-server")
    prompt = t.prefix(normalize_tools([PONG]), system="ignored in v1") + t.suffix(Turn(QUERY, HISTORY, ENV))
    assert prompt == (
        V1_SERVER_SYSTEM + PONG_LINE + "\n<|im_end|>\n"
        "<|im_start|>user\n"
        'environment: ["ball_y=120", "paddle_y=200", "diff=-80", "ball_moving_towards", "ball_vy=up"]\n'
        "history: [stay, down, fb:stay, up, down, stay]\n"
        "\n" + QUERY + "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_v1_server_golden_no_environment_bare_tools():
    t = get_template("v1-server")
    prompt = t.prefix(normalize_tools([PONG, BFCL])) + t.suffix(Turn("go"))
    assert prompt == (
        V1_SERVER_SYSTEM + PONG_LINE + "\n" + BFCL_LINE + "\n<|im_end|>\n"
        "<|im_start|>user\nenvironment: []\nhistory: []\n\ngo<|im_end|>\n<|im_start|>assistant\n"
    )


def test_v2_server_golden():
    t = get_template("v2-server")
    tools = normalize_tools([BFCL])
    sys_part = (
        "<|im_start|>system\n" + DEFAULT_SYSTEM + "\n\n## Available Tools:\n\n" + BFCL_LINE + "\n<|im_end|>\n"
    )
    # no system and an empty one both give the default (the server reads ``system or default``)
    assert t.prefix(tools) == t.prefix(tools, system="") == sys_part
    assert t.prefix(tools, system="Drive the car.") == sys_part.replace(DEFAULT_SYSTEM, "Drive the car.")
    assert t.suffix(Turn(QUERY, HISTORY, ENV)) == (
        "<|im_start|>user\nhistory: [stay, down, fb:stay, up, down, stay]\n\n"
        'environment: ["ball_y=120", "paddle_y=200", "diff=-80", "ball_moving_towards", "ball_vy=up"]\n'
        + QUERY
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    # no (or an empty) environment: nothing prepended
    for env in (None, []):
        assert (
            t.suffix(Turn("go", [], env))
            == "<|im_start|>user\nhistory: []\n\ngo<|im_end|>\n<|im_start|>assistant\n"
        )


def test_server_variants_differ_from_training_forms_where_documented():
    tools = normalize_tools([BFCL])
    v2, v2s = get_template("v2"), get_template("v2-server")
    # the training-time v2 keeps an empty system, wraps and converts the tool, keeps the whole history
    assert v2.prefix(tools, system="").startswith("<|im_start|>system\n\n\n## Available Tools:")
    assert '"type": "function"' in v2.prefix(tools) and '"type": "function"' not in v2s.prefix(tools)
    assert "history: [up, up, stay" in v2.suffix(Turn("q", HISTORY))
    assert SERVER_VARIANTS == {"v1": "v1-server", "v2": "v2-server"}
    assert {"v1", "v2", "compact", "v1-server", "v2-server"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", ["v1-server", "v2-server"])
def test_server_prefix_is_static(name):
    t = get_template(name)
    tools = normalize_tools([PONG])
    assert t.prefix(tools) == t.prefix(tools) and QUERY not in t.prefix(tools)
