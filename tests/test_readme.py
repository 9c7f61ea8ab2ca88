"""The README's example node is real code: extract it from the README, register it and run it through the engine."""

import re
from pathlib import Path
from typing import Annotated, Any

import torch

from graphengine import Executor, Node, NodeOutput, NodeRegistry, Socket, validate_prompt, PromptValidationError

README = Path(__file__).resolve().parents[1] / "README.md"


def example_node_class():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Writing a node"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["NoisyLatent"]


class Capture(Node):
    OUTPUT_NODE = True
    RETURNS = ()
    latent: Annotated[Any, Socket("LATENT")]

    def execute(self, ctx):
        return NodeOutput(ui={"latent": [self.latent]})


def test_readme_example_node_runs():
    registry = NodeRegistry()
    registry.register_all([example_node_class(), Capture])
    info = registry.node_info("NoisyLatent")
    assert info["description"] == "Fill a batch of latents with seeded Gaussian noise."
    assert info["input"]["optional"] == {"mask": ["MASK"]}
    prompt = {"1": {"class_type": "NoisyLatent", "inputs": {"width": 64, "height": 32, "seed": 3, "scale": 2.0,
                                                            "mode": "gaussian"}},
              "2": {"class_type": "Capture", "inputs": {"latent": ["1", 0]}}}
    first = Executor(registry).execute(prompt).outputs["2"]["latent"][0]["samples"]
    assert first.shape == (1, 4, 4, 8)
    expected = torch.randn((1, 4, 4, 8), generator=torch.Generator().manual_seed(3)) * 2.0
    assert torch.equal(first, expected)
    prompt["1"]["inputs"]["width"] = 60
    try:
        validate_prompt(prompt, registry)
    except PromptValidationError as err:
        assert "width must be a multiple of 8" in err.node_errors["1"]["errors"][0]["details"]
    else:
        raise AssertionError("the example's validate_inputs hook did not run")


def quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text[text.index("## Quick start"):], re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_quick_start():
    commands = quick_start_commands()
    assert len(commands) == 2  # set up and run the main job; run the tests
    assert "--index-url https://download.pytorch.org/whl/cpu" in commands[0]
    assert commands[0].endswith("graphengine run workflows/txt2img.json")
    ci_lines = (README.parent / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    found = [next(i for i, line in enumerate(ci_lines) if line.removesuffix(" \\") == command)
             for command in commands]
    assert found == sorted(found)  # in the README's order
