"""Property-based: thousands of random malformed graphs never make the validator raise anything unstructured."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphengine import PromptValidationError, ValidatedPrompt, validate_prompt

CLASS_TYPES = ["Number", "Add", "ShowValue", "Switch", "Range", "Sum", "CountTo", "Fail", "Missing", "", None, 3]
INPUT_NAMES = ["value", "a", "b", "select", "on_true", "on_false", "count", "values", "steps", "message", "zzz"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["false", "true", "1e400", "nan", "-0", " 7 "]))
ids = st.sampled_from(["1", "2", "3", "4", "5", "x"])
links = st.one_of(st.tuples(ids, st.integers(-2, 3)).map(list),
                  st.lists(st.one_of(ids, st.integers(), st.floats(), st.none()), max_size=4))
values = st.one_of(scalars, links, st.fixed_dictionaries({"__value__": st.one_of(scalars, st.lists(scalars))}),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
nodes = st.one_of(
    st.fixed_dictionaries({"class_type": st.sampled_from(CLASS_TYPES),
                           "inputs": st.dictionaries(st.sampled_from(INPUT_NAMES), values, max_size=5)},
                          optional={"_meta": st.one_of(st.none(), st.fixed_dictionaries({"title": st.text(max_size=4)}))}),
    st.fixed_dictionaries({"class_type": st.sampled_from(CLASS_TYPES), "inputs": st.one_of(scalars, st.lists(scalars))}),
    scalars,
    st.lists(scalars, max_size=2),
)
prompts = st.one_of(st.dictionaries(ids, nodes, max_size=6), scalars, st.lists(nodes, max_size=2),
                    st.dictionaries(st.integers(), nodes, max_size=2))


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompts, st.one_of(st.none(), st.lists(ids, max_size=3), scalars))
def test_random_graphs_get_structured_results(registry, prompt, targets):
    try:
        result = validate_prompt(prompt, registry, targets)
    except PromptValidationError as err:
        b = err.body()
        assert set(b["error"]) == {"type", "message", "details", "extra_info"}
        assert isinstance(b["error"]["type"], str) and b["error"]["type"] != "exception_during_validation", b
        for entry in b["node_errors"].values():
            assert {"errors", "dependent_outputs", "class_type"} <= set(entry)
        json.dumps(b, default=str)
    else:
        assert isinstance(result, ValidatedPrompt) and result.outputs
        for call in result.nodes.values():
            assert set(call.inputs) <= set(call.schema.inputs)
