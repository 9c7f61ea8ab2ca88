"""graphengine: a typed node-graph workflow engine, wire-compatible with ComfyUI's prompt format."""

from .admission import AdmissionError, AdmissionLimits, Estimate, admit, estimate_prompt
from .cache import CacheEntry, ResultCache, default_sizeof
from .context import CancelToken, ExecutionContext, Interrupted, current_context
from .events import (Event, EventHub, Executed, ExecutionCached, ExecutionError, ExecutionInterrupted, Executing,
                     ExecutionStart, ExecutionSuccess, Progress, ProgressPreview)
from .executor import ExecutionResult, Executor, NodeExecutionError
from .node import ExecutionBlocker, Node, NodeDefinitionError, NodeOutput, NodeSchema
from .registry import NodeRegistry
from .runtime import RuntimeConfig, build_registry
from .spec import (Boolean, BooleanInput, Combo, ComboInput, Float, FloatInput, InputSpec, Int, IntInput, Output,
                   Socket, SocketInput, String, StringInput)
from .validation import Link, PromptValidationError, ValidatedPrompt, validate_prompt

__all__ = [
    "AdmissionError", "AdmissionLimits", "Estimate", "admit", "estimate_prompt",
    "Boolean", "BooleanInput", "CacheEntry", "CancelToken", "Combo", "ComboInput", "Event", "EventHub", "Executed",
    "ExecutionBlocker", "ExecutionCached", "ExecutionContext", "ExecutionError", "ExecutionInterrupted", "ExecutionResult",
    "ExecutionStart", "ExecutionSuccess", "Executing", "Executor", "Float", "FloatInput", "InputSpec", "Int",
    "IntInput", "Interrupted", "Link", "Node", "NodeDefinitionError", "NodeExecutionError", "NodeOutput",
    "NodeRegistry", "NodeSchema", "Output", "Progress", "ProgressPreview", "PromptValidationError", "ResultCache",
    "RuntimeConfig", "Socket", "SocketInput", "String", "StringInput", "ValidatedPrompt", "build_registry",
    "current_context", "default_sizeof", "validate_prompt",
]
