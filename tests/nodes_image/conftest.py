"""Fixtures: the node-test fixtures of tests/nodes_basic over a registry holding every node of the pack."""

import pytest

from graphengine import NodeRegistry, PromptValidationError
from nodes import node_classes
from nodes.services import Services
from tests.nodes_basic.conftest import TEST_NODES, config, executor, run_node  # noqa: F401 - shared fixtures


@pytest.fixture
def registry(config) -> NodeRegistry:  # noqa: F811
    reg = NodeRegistry(Services(config=config))
    reg.register_all(node_classes())
    reg.register_all(TEST_NODES, python_module="tests")
    return reg


@pytest.fixture
def run_error(executor):  # noqa: F811
    """The exception message of a one-node prompt that fails at run time."""

    def run(class_type: str, inputs: dict, extra: dict | None = None) -> str:
        prompt = dict(extra or {})
        prompt["n"] = {"class_type": class_type, "inputs": inputs}
        prompt["out"] = {"class_type": "Capture", "inputs": {"value": ["n", 0]}}
        result = executor.execute(prompt)
        assert not result.ok
        return result.error["exception_message"]

    return run


@pytest.fixture
def rejected(executor):  # noqa: F811
    """The error types validation gives a one-node prompt (it must be refused)."""

    def check(class_type: str, inputs: dict, extra: dict | None = None) -> set[str]:
        prompt = dict(extra or {})
        prompt["n"] = {"class_type": class_type, "inputs": inputs}
        prompt["out"] = {"class_type": "Capture", "inputs": {"value": ["n", 0]}}
        with pytest.raises(PromptValidationError) as caught:
            executor.execute(prompt)
        return {e["type"] for e in caught.value.node_errors["n"]["errors"]}

    return check
