"""Admission control on the real Stable Diffusion nodes, the CLI's limits, and out-of-memory failures."""

import json
from pathlib import Path

import pytest

from graphengine import (AdmissionError, AdmissionLimits, CancelToken, EventHub, Executor, NodeRegistry, RuntimeConfig,
                         admit, build_registry, estimate_prompt, validate_prompt)
from graphengine.cache import compute_signatures
from graphengine.cli import main
from graphengine.examples import EXAMPLE_NODES
from graphengine.memory import MemoryGuard, process_rss
from tests.server.memory_nodes import MEMORY_NODES
from tests.workflows.conftest import unbundled_model_names

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def sd_registry(tmp_path_factory) -> NodeRegistry:
    unbundled = unbundled_model_names(tmp_path_factory.mktemp("unbundled"))
    return build_registry(RuntimeConfig(base_dir=REPO, extra_model_paths=[unbundled]))


def workflow(name: str, **changes: dict) -> dict:
    prompt = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
    return prompt


# Each issue reproducer on txt2img (1 checkpoint, 2/3 CLIPTextEncode, 4 EmptyLatentImage, 5 KSampler, 6 VAEDecode,
# 7 SaveImage): (changes, refused node, its class, the limit that refuses it, the flag that raises it).
REPRODUCERS = [
    ({"2": {"text": "a " * 2_000_000}}, "2", "CLIPTextEncode", "max_text_length", "--max-text-length"),
    ({"4": {"width": 16384, "height": 16384}}, "4", "EmptyLatentImage", "max_batch_pixels", "--max-batch-pixels"),
    ({"4": {"batch_size": 4096}}, "4", "EmptyLatentImage", "max_batch_pixels", "--max-batch-pixels"),
    ({"4": {"width": 2048, "height": 2048}, "5": {"steps": 10000}}, "5", "KSampler", "max_step_pixels",
     "--max-step-pixels"),
]


def refusal(prompt: dict, registry: NodeRegistry, limits: AdmissionLimits) -> dict:
    with pytest.raises(AdmissionError) as caught:
        admit(validate_prompt(prompt, registry), registry.services, limits)
    return caught.value.body()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_shipped_workflow_is_admitted_with_the_machine_defaults(sd_registry, path):
    prompt = json.loads(path.read_text())
    estimate = admit(validate_prompt(prompt, sd_registry), sd_registry.services,
                     AdmissionLimits.for_machine(sd_registry.services))
    assert estimate.work > 0 and estimate.memory_bytes > 0


@pytest.mark.parametrize("changes, node_id, class_type, limit, flag", REPRODUCERS)
def test_reproducers_are_refused_naming_the_node_the_limit_and_the_flag(sd_registry, changes, node_id,
                                                                          class_type, limit, flag):
    body = refusal(workflow("txt2img", **changes), sd_registry, AdmissionLimits.for_machine(sd_registry.services))
    assert body["error"]["type"] == "resource_limit_exceeded"
    entry = body["node_errors"][node_id]
    assert entry["class_type"] == class_type and entry["dependent_outputs"] == ["7"]
    error = next(e for e in entry["errors"] if e["extra_info"]["limit"] == limit)
    info = error["extra_info"]
    assert error["type"] == "resource_limit_exceeded" and info["flag"] == flag and info["node_id"] == node_id
    assert info["value"] > info["maximum"] == getattr(AdmissionLimits(), limit)
    assert flag in error["details"] and class_type in error["details"]


def test_sdxl_and_hires_sized_prompts_pass_the_default_caps(sd_registry):
    limits = AdmissionLimits(memory_budget=None)
    sdxl_like = workflow("txt2img", **{"4": {"width": 1024, "height": 1024, "batch_size": 4}, "5": {"steps": 50}})
    admit(validate_prompt(sdxl_like, sd_registry), sd_registry.services, limits)
    hires = workflow("hires_fix", **{"4": {"width": 512, "height": 512, "batch_size": 8}, "6": {"scale_by": 2.0}})
    estimate = admit(validate_prompt(hires, sd_registry), sd_registry.services, limits)
    assert estimate.nodes["7"].quantities["batch_pixels"] == 8 * 1024 * 1024


def test_prompt_work_and_memory_budget_name_the_costliest_node(sd_registry):
    prompt = validate_prompt(workflow("variations_seeds"), sd_registry)
    per_sampler = estimate_prompt(prompt, sd_registry.services).nodes["5"].work
    body = refusal(workflow("variations_seeds"), sd_registry, AdmissionLimits(max_prompt_work=int(per_sampler * 2)))
    (node_id, entry), = body["node_errors"].items()
    assert entry["class_type"] == "KSampler" and entry["errors"][0]["extra_info"]["limit"] == "max_prompt_work"
    body = refusal(workflow("txt2img"), sd_registry, AdmissionLimits(memory_budget=10 * 1024**2))
    assert body["node_errors"]["1"]["class_type"] == "CheckpointLoaderSimple"  # the 27 MB demo checkpoint
    assert body["node_errors"]["1"]["errors"][0]["extra_info"]["flag"] == "--memory-budget"


def test_raised_limits_admit_what_the_defaults_refuse(sd_registry):
    big = workflow("txt2img", **{"4": {"width": 4096, "height": 4096}})
    refusal(big, sd_registry, AdmissionLimits())
    admit(validate_prompt(big, sd_registry), sd_registry.services,
          AdmissionLimits(max_batch_pixels=20_000_000, memory_budget=None))


def test_estimates_match_the_tensors_a_real_run_makes(sd_registry):
    prompt = workflow("hires_fix")
    validated = validate_prompt(prompt, sd_registry)
    estimate = estimate_prompt(validated, sd_registry.services)
    executor = Executor(sd_registry, events=EventHub())
    result = executor.execute(validated)
    assert result.ok, result.error
    signatures = compute_signatures(validated.nodes, list(validated.nodes), sd_registry.services)
    for node_id, call in validated.nodes.items():
        for slot, extent in enumerate(estimate.nodes[node_id].extents):
            if extent is None:
                continue
            value = executor.cache.get(signatures[node_id]).outputs[slot][0]
            tensor = value["samples"] if extent["type"] == "LATENT" else value
            assert tensor.element_size() * tensor.numel() == extent["bytes"], (node_id, call.class_type)
            height, width = tensor.shape[-2:] if extent["type"] == "LATENT" else tensor.shape[1:3]
            scale = 8 if extent["type"] == "LATENT" else 1
            assert (tensor.shape[0], height * scale, width * scale) == \
                (extent["batch"], extent["height"], extent["width"]), (node_id, call.class_type)


# -- the command line ---------------------------------------------------------------------------------------------

def test_cli_refuses_reproducers_with_one_line_and_flags_raise_the_limits(tmp_path, capsys):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(workflow("txt2img", **{"4": {"width": 16384, "height": 16384}})))
    code = main(["run", str(path), "--base-dir", str(REPO), "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "EmptyLatentImage (node 4)" in err and "--max-batch-pixels" in err
    assert "Traceback" not in err
    path.write_text(json.dumps(workflow("txt2img", **{"2": {"text": "a " * 15_000}})))
    assert main(["validate", str(path), "--base-dir", str(REPO)]) == 2
    assert "--max-text-length" in capsys.readouterr().err
    assert main(["validate", str(path), "--base-dir", str(REPO), "--max-text-length", "40k"]) == 0


# -- out of memory while running ------------------------------------------------------------------------------------

@pytest.fixture
def memory_registry() -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_all(EXAMPLE_NODES, python_module="graphengine.examples")
    registry.register_all(MEMORY_NODES, python_module="tests.server.memory_nodes")
    return registry


def chain(node: str, **inputs) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": 1}},
            "2": {"class_type": node, "inputs": {"value": ["1", 0], **inputs}},
            "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}


def test_memory_error_is_an_execution_error_naming_the_node_and_the_next_prompt_runs(memory_registry):
    executor = Executor(memory_registry, events=EventHub())
    assert executor.execute({"9": {"class_type": "Number", "inputs": {"value": 5}},
                             "8": {"class_type": "ShowValue", "inputs": {"value": ["9", 0]}}}).ok
    cached_before = len(executor.cache)
    result = executor.execute(chain("Hungry"))
    assert result.status == "error"
    assert result.error["exception_type"] == "MemoryError" and result.error["node_id"] == "2"
    assert result.error["exception_message"].startswith("Out of memory in Hungry (node 2)")
    assert cached_before == 2 and len(executor.cache) == 1  # only this prompt's finished Number is kept
    assert executor.execute(chain("Allocate", block_mb=1, steps=1)).outputs["3"] == {"text": ["2"]}


def test_memory_guard_fails_the_growing_node_with_out_of_memory(memory_registry):
    executor = Executor(memory_registry, events=EventHub())
    cancel = CancelToken()
    with MemoryGuard(process_rss() + 128 * 1024**2, cancel) as guard:
        result = executor.execute(chain("Allocate", block_mb=32, steps=200), cancel=cancel)
    assert guard.tripped and result.status == "error"
    assert result.error["exception_type"] == "graphengine.memory.OutOfMemoryError"
    assert result.error["node_id"] == "2" and "memory budget" in result.error["exception_message"]
    assert executor.execute(chain("Allocate", block_mb=1, steps=2)).outputs["3"] == {"text": ["3"]}
