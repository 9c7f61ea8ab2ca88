import pytest

from graphengine import EventHub, Executor, NodeRegistry
from graphengine.examples import EXAMPLE_NODES


@pytest.fixture
def registry() -> NodeRegistry:
    reg = NodeRegistry()
    reg.register_all(EXAMPLE_NODES, python_module="graphengine.examples")
    return reg


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def executor(registry, recorder) -> Executor:
    hub = EventHub()
    hub.subscribe(recorder)
    return Executor(registry, events=hub)
