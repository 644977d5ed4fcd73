"""models/: the words. Tool schemas, the SimpleTool format, decoding engines, call assembly,
training and quantization. Imports nothing of ours, nothing of Ray or ZeroMQ.

Heavy backends (torch, vLLM) are imported only from their own modules.
"""

from tickcall.models.calls import Call, render_call
from tickcall.models.engine import Decision, Engine, EngineError, Registration, UnknownHandleError
from tickcall.models.format import SPECIAL_TOKENS, Turn, get_template
from tickcall.models.random_engine import RandomEngine
from tickcall.models.stand_ins import NoOpEngine
from tickcall.models.tools import ToolSchemaError, ToolSpec, normalize_tool, normalize_tools

__all__ = [
    "Call", "Decision", "Engine", "EngineError", "NoOpEngine", "RandomEngine", "Registration", "SPECIAL_TOKENS",
    "ToolSchemaError", "ToolSpec", "Turn", "UnknownHandleError", "get_template", "normalize_tool",
    "normalize_tools", "render_call",
]
