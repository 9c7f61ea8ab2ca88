"""ComfyUI's primitive nodes: one widget value passed on as an INT, FLOAT, STRING or BOOLEAN output."""

from __future__ import annotations

import sys
from typing import Annotated

from graphengine import Boolean, Float, Int, Node, Output, String

CATEGORY = "utils/primitive"


class PrimitiveInt(Node):
    """An integer value."""

    DISPLAY_NAME = "Int"
    CATEGORY = CATEGORY
    RETURNS = (Output("INT"),)
    value: Annotated[int, Int(min=-sys.maxsize, max=sys.maxsize, control_after_generate=True)]

    def execute(self, ctx) -> tuple:
        return (int(self.value),)


class PrimitiveFloat(Node):
    """A floating-point value."""

    DISPLAY_NAME = "Float"
    CATEGORY = CATEGORY
    RETURNS = (Output("FLOAT"),)
    value: Annotated[float, Float(min=-sys.maxsize, max=sys.maxsize)]

    def execute(self, ctx) -> tuple:
        return (float(self.value),)


class PrimitiveString(Node):
    """A single-line text value."""

    DISPLAY_NAME = "String"
    CATEGORY = CATEGORY
    RETURNS = (Output("STRING"),)
    value: Annotated[str, String()]

    def execute(self, ctx) -> tuple:
        return (str(self.value),)


class PrimitiveStringMultiline(PrimitiveString):
    """A multi-line text value."""

    DISPLAY_NAME = "String (Multiline)"
    value: Annotated[str, String(multiline=True)]


class PrimitiveBoolean(Node):
    """A true/false value."""

    DISPLAY_NAME = "Boolean"
    CATEGORY = CATEGORY
    RETURNS = (Output("BOOLEAN"),)
    value: Annotated[bool, Boolean()]

    def execute(self, ctx) -> tuple:
        return (bool(self.value),)


NODE_CLASSES = [PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean]
