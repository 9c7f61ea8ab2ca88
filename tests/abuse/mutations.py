"""Seeded mutations of API-format prompts for the fuzz test: wrong types, absurd numbers, broken and cyclic links,
unknown classes, non-object nodes, unicode and very long strings, nested values, bad envelope fields, raw-text damage.

Every mutation is drawn from a `random.Random`, so a seed reproduces the exact request sequence."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

from .payloads import deep_json

NESTED = json.loads(deep_json(40, '{"a": [1, {"b": null}]}'))
WEIRD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.0, 2**63, -(2**63) - 1, 2**200, 1e308, -1e308, 5e-324,
    float("nan"), float("inf"), float("-inf"),
    "", " ", "nan", "NaN", "inf", "-inf", "1e400", "-0", "0x10", "１２３", "\x00", "\ud800", "e\u0301\u202e😀" * 20,
    "a" * 100_000, "../../../etc/passwd", "C:\\Windows\\win.ini", "%s%n{0}",
    [], {}, [None], ["1"], ["1", 0, 0], ["missing", 0], ["1", -1], ["1", 2**70], ["1", "0"], ["1", 0.0],
    ["1", True], [1, 0], [None, None], {"__value__": None}, {"__value__": ["x", 1]}, {"__value__": 2**70},
    {"a": {"b": [1, {"c": []}]}}, NESTED, list(range(1000)),
]
WEIRD_IDS = ["", "0", "-1", "a" * 1000, "😀", "\ud800", " 1", "1.0", "null", "__proto__"]

Prompt = dict[str, Any]


def weird(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(WEIRD_VALUES))


def _node(rng: random.Random, prompt: Prompt) -> tuple[str, dict[str, Any]] | None:
    candidates = [(k, v) for k, v in prompt.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)]
    return rng.choice(candidates) if candidates else None


def _set_input(rng: random.Random, prompt: Prompt, value: Callable[[], Any]) -> None:
    found = _node(rng, prompt)
    if found is None:
        return
    _, node = found
    names = list(node["inputs"]) + ["no_such_input"]
    node["inputs"][rng.choice(names)] = value()


def replace_input(rng, prompt):
    _set_input(rng, prompt, lambda: weird(rng))


def number_as_text(rng, prompt):
    _set_input(rng, prompt, lambda: rng.choice(["1e309", "-1e309", "nan", "inf", "99999999999999999999999", "-7",
                                                "0.5", " 3 ", "+4", "1_000"]))


def delete_input(rng, prompt):
    found = _node(rng, prompt)
    if found and found[1]["inputs"]:
        del found[1]["inputs"][rng.choice(list(found[1]["inputs"]))]


def relink(rng, prompt):
    """Point an input at a random node's random slot: type mismatches, missing slots, self links."""
    ids = list(prompt) + ["missing"]
    _set_input(rng, prompt, lambda: [rng.choice(ids), rng.choice([0, 1, 2, 3, -1, 7])])


def make_cycle(rng, prompt):
    found = _node(rng, prompt)
    if found is None:
        return
    node_id, node = found
    parents = [v[0] for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in prompt]
    if not parents:
        node["inputs"][rng.choice(list(node["inputs"]) or ["x"])] = [node_id, 0]  # a self loop
        return
    parent = prompt[rng.choice(parents)]
    if isinstance(parent, dict) and isinstance(parent.get("inputs"), dict):
        parent["inputs"][rng.choice(list(parent["inputs"]) or ["x"])] = [node_id, 0]


def change_class(rng, prompt):
    found = _node(rng, prompt)
    if found is None:
        return
    classes = [n.get("class_type") for n in prompt.values() if isinstance(n, dict)]
    found[1]["class_type"] = rng.choice([*classes, "NoSuchNode", "", None, 5, ["KSampler"], "ksampler",
                                         "KSampler ", "SaveImage\x00"])


def break_node(rng, prompt):
    if prompt:
        prompt[rng.choice(list(prompt))] = rng.choice([None, 1, "node", [], [{"class_type": "SaveImage"}], {}])


def break_inputs_or_meta(rng, prompt):
    found = _node(rng, prompt)
    if found:
        found[1][rng.choice(["inputs", "_meta", "class_type"])] = weird(rng)


def remove_node(rng, prompt):
    if prompt:
        del prompt[rng.choice(list(prompt))]


def rename_node(rng, prompt):
    if prompt:
        old = rng.choice(list(prompt))
        prompt[rng.choice(WEIRD_IDS)] = prompt.pop(old)


def duplicate_node(rng, prompt):
    if prompt:
        prompt[f"{rng.choice(list(prompt))}{rng.randrange(10)}"] = copy.deepcopy(prompt[rng.choice(list(prompt))])


def huge_sizes(rng, prompt):
    for node in prompt.values():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            for name in ("width", "height", "batch_size", "steps", "amount", "length"):
                if name in node["inputs"]:
                    node["inputs"][name] = rng.choice([0, -64, 2**31, 16384, 10**9, 7])


NODE_MUTATIONS = [replace_input, replace_input, number_as_text, delete_input, relink, relink, make_cycle,
                  change_class, break_node, break_inputs_or_meta, remove_node, rename_node, duplicate_node,
                  huge_sizes]


def envelope(rng: random.Random, prompt: Any, prompt_ids: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    for key, values in (("client_id", ["fuzz", "", 5, None, "\ud800", "x" * 10_000, ["a"]]),
                        ("prompt_id", [*prompt_ids[-3:], "", "../x", 7, "ok-id", "a" * 200, None]),
                        ("number", [1, -1, "3", "nan", "1e400", 1e308, [1], True, None]),
                        ("front", [True, False, "yes", 2, None, [1]]),
                        ("extra_data", [{}, None, [], "x", {"extra_pnginfo": NESTED}, {"client_id": 5},
                                        {"preview_method": ["x"]}, {"auth_token_comfy_org": "\ud800"}]),
                        ("partial_execution_targets", [None, [], ["9"], ["1", 2], "9", [None], {"9": 1}])):
        if rng.random() < 0.15:
            body[key] = copy.deepcopy(rng.choice(values))
    return body


def mutated_request(rng: random.Random, base: Prompt, prompt_ids: list[str]) -> str | bytes:
    """One request body: the base prompt with 1–3 mutations, in an envelope that is sometimes odd too."""
    prompt: Any = copy.deepcopy(base)
    for _ in range(rng.randint(1, 3)):
        rng.choice(NODE_MUTATIONS)(rng, prompt)
    if rng.random() < 0.03:
        prompt = weird(rng)
    text = json.dumps(envelope(rng, prompt, prompt_ids))  # NaN / Infinity tokens included, as clients send them
    roll = rng.random()
    if roll < 0.03 and isinstance(prompt, dict) and prompt:  # a duplicated key in the raw text
        key = rng.choice(list(prompt))
        return text.replace('"prompt": {', '"prompt": {' + json.dumps(key) + ': {"class_type": 1}, ', 1)
    if roll < 0.05:
        return text[: rng.randrange(len(text))]  # truncated
    if roll < 0.06:
        return text.encode()[:-1] + b"\xff\xfe"  # not UTF-8
    return text
