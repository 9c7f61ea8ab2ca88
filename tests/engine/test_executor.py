import os
import threading
from typing import Annotated, Any

from graphengine import (CancelToken, EventHub, Executor, Float, Int, Node, NodeOutput, NodeRegistry, Output,
                         ResultCache, Socket, default_sizeof, validate_prompt)
from graphengine.events import ExecutionError, Progress
from graphengine.cache import ENTRY_OVERHEAD


def graph(a=1, b=2, c=3):
    return {"1": {"class_type": "Number", "inputs": {"value": a}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": b}},
            "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": c}},
            "4": {"class_type": "ShowValue", "inputs": {"value": ["3", 0]}}}


def test_runs_and_reports_outputs(executor, recorder):
    result = executor.execute(graph(), prompt_id="p1")
    assert result.ok and result.outputs == {"4": {"text": ["6"]}}
    assert result.executed == ["1", "2", "3", "4"]
    ps = "progress_state"
    assert recorder.types() == ["execution_start", "execution_cached", ps, "executing", ps, ps, "executing", ps,
                                ps, "executing", ps, ps, "executing", ps, "executed", "execution_success",
                                "executing"]
    assert recorder.events[-1].message() == {"type": "executing", "data": {"node": None, "prompt_id": "p1"}}
    assert recorder.events[14].message()["data"] == {"node": "4", "display_node": "4", "output": {"text": ["6"]},
                                                      "prompt_id": "p1"}
    last_state = recorder.events[13].message()["data"]
    assert last_state["prompt_id"] == "p1"
    assert {k: (v["state"], v["value"], v["max"]) for k, v in last_state["nodes"].items()} == {
        n: ("finished", 1, 1) for n in ("1", "2", "3", "4")}
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]


def test_unchanged_rerun_executes_nothing_and_resends_ui(executor, recorder):
    executor.execute(graph())
    recorder.events.clear()
    result = executor.execute(graph())
    assert result.executed == [] and sorted(result.cached) == ["1", "2", "3", "4"]
    assert result.outputs == {"4": {"text": ["6"]}}
    # ComfyUI still visits a cached output node: its UI again, then its finished progress_state (only that node)
    assert recorder.types() == ["execution_start", "execution_cached", "executed", "progress_state",
                                "execution_success", "executing"]
    assert {k: (v["state"], v["value"], v["max"]) for k, v in recorder.events[3].data()["nodes"].items()} == {
        "4": ("finished", 1, 1)}


def test_changing_one_widget_reruns_only_that_node_and_descendants(executor):
    executor.execute(graph())
    result = executor.execute(graph(c=10))
    assert result.executed == ["3", "4"] and result.outputs["4"] == {"text": ["13"]}
    result = executor.execute(graph(b=5, c=10))
    assert result.executed == ["2", "3", "4"]


def test_identical_subgraphs_share_results_regardless_of_ids(executor):
    executor.execute(graph())
    renamed = {"a": {"class_type": "Number", "inputs": {"value": 1}},
               "b": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": 2}},
               "c": {"class_type": "ShowValue", "inputs": {"value": ["b", 0]}}}
    result = executor.execute(renamed)
    assert result.executed == ["c"]  # a and b match nodes 1 and 2 of the first graph
    twin = {"x1": {"class_type": "Number", "inputs": {"value": 9}}, "x2": {"class_type": "Number", "inputs": {"value": 9}},
            "s1": {"class_type": "ShowValue", "inputs": {"value": ["x1", 0]}},
            "s2": {"class_type": "ShowValue", "inputs": {"value": ["x2", 0]}}}
    assert executor.execute(twin).executed == ["x1", "s1"]  # x2/s2 share x1/s1's signature in the same prompt


def test_failure_aborts_with_structured_error_and_rerun_resumes(executor, recorder):
    prompt = graph()
    prompt["5"] = {"class_type": "Fail", "inputs": {"message": "kaput", "value": ["2", 0]}}
    prompt["6"] = {"class_type": "ShowValue", "inputs": {"value": ["5", 0]}}
    result = executor.execute(prompt, prompt_id="p")
    assert result.status == "error"
    err = result.error
    assert (err["node_id"], err["node_type"], err["exception_type"], err["exception_message"]) == \
        ("5", "Fail", "RuntimeError", "kaput")
    assert err["current_inputs"] == {"message": ["kaput"], "value": ["3"]}
    assert any("kaput" in line for line in err["traceback"])
    assert set(err["keys"] if "keys" in err else err) >= {"prompt_id", "executed", "current_outputs", "timestamp"}
    assert isinstance(recorder.events[-2], ExecutionError)
    prompt["5"] = {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 0}}
    rerun = executor.execute(prompt)
    assert rerun.ok and "1" not in rerun.executed and "2" not in rerun.executed


def test_list_semantics_repeat_last_element(executor):
    prompt = {"r": {"class_type": "Range", "inputs": {"count": 3}},
              "add": {"class_type": "Add", "inputs": {"a": ["r", 0], "b": 10}},
              "show": {"class_type": "ShowValue", "inputs": {"value": ["add", 0]}},
              "sum": {"class_type": "Sum", "inputs": {"values": ["add", 0]}},
              "show_sum": {"class_type": "ShowValue", "inputs": {"value": ["sum", 0]}}}
    result = executor.execute(prompt)
    assert result.outputs["show"] == {"text": ["10", "11", "12"]}
    assert result.outputs["show_sum"] == {"text": ["33"]}


def test_shorter_list_repeats_its_last_element(registry):
    class Pair(Node):
        RETURNS = (Output("STRING"),)
        a: Annotated[int, Socket("INT")]
        b: Annotated[int, Socket("INT")]

        def execute(self, ctx):
            return (f"{self.a}-{self.b}",)

    registry.register(Pair)
    prompt = {"r3": {"class_type": "Range", "inputs": {"count": 3}},
              "r1": {"class_type": "Range", "inputs": {"count": 1}},
              "p": {"class_type": "Pair", "inputs": {"a": ["r3", 0], "b": ["r1", 0]}},
              "s": {"class_type": "ShowValue", "inputs": {"value": ["p", 0]}}}
    assert Executor(registry).execute(prompt).outputs["s"] == {"text": ["0-0", "1-0", "2-0"]}


def test_lazy_inputs_evaluate_only_the_chosen_branch(executor):
    prompt = {"n": {"class_type": "Number", "inputs": {"value": 4}},
              "bad": {"class_type": "Fail", "inputs": {"message": "must not run"}},
              "sw": {"class_type": "Switch", "inputs": {"select": True, "on_true": ["n", 0], "on_false": ["bad", 0]}},
              "out": {"class_type": "ShowValue", "inputs": {"value": ["sw", 0]}}}
    result = executor.execute(prompt)
    assert result.ok and result.outputs["out"] == {"text": ["4"]} and "bad" not in result.executed
    prompt["sw"]["inputs"]["select"] = False
    failed = executor.execute(prompt)
    assert failed.status == "error" and failed.error["node_id"] == "bad"


def test_cancel_at_a_progress_tick(registry):
    token = CancelToken()
    hub = EventHub()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, Progress) and event.value == 3:
            token.cancel()

    hub.subscribe(on_event)
    prompt = {"c": {"class_type": "CountTo", "inputs": {"steps": 100}},
              "s": {"class_type": "ShowValue", "inputs": {"value": ["c", 0]}}}
    result = Executor(registry, events=hub).execute(prompt, prompt_id="x", cancel=token)
    assert result.status == "interrupted"
    progress = [e.value for e in seen if isinstance(e, Progress)]
    assert progress == [1, 2, 3]
    interrupted = [e for e in seen if e.type == "execution_interrupted"][0]
    assert interrupted.data()["node_id"] == "c" and interrupted.data()["node_type"] == "CountTo"
    assert result.messages[-1][0] == "execution_interrupted"


def test_cancel_between_nodes_from_another_thread(registry):
    token = CancelToken()
    started = threading.Event()

    class Gate(Node):
        RETURNS = (Output("INT"),)
        x: Annotated[int, Socket("INT")]

        def execute(self, ctx):
            started.set()
            token.cancel()
            return (self.x,)

    registry.register(Gate)
    prompt = {"n": {"class_type": "Number", "inputs": {"value": 1}},
              "g": {"class_type": "Gate", "inputs": {"x": ["n", 0]}},
              "a": {"class_type": "Add", "inputs": {"a": ["g", 0], "b": 1}},
              "s": {"class_type": "ShowValue", "inputs": {"value": ["a", 0]}}}
    result = Executor(registry).execute(prompt, cancel=token)
    assert started.is_set() and result.status == "interrupted" and result.executed == ["n", "g"]


def test_fingerprint_nan_always_reruns_and_value_fingerprint_tracks_changes(registry):
    state = {"version": 1, "runs": 0}

    class Volatile(Node):
        NOT_IDEMPOTENT = False
        RETURNS = (Output("INT"),)
        name: Annotated[int, Int()] = 0

        @classmethod
        def fingerprint(cls, inputs, services=None):
            return float("nan") if inputs["name"] < 0 else state["version"]

        def execute(self, ctx):
            state["runs"] += 1
            return (state["runs"],)

    registry.register(Volatile)
    ex = Executor(registry)
    prompt = {"v": {"class_type": "Volatile", "inputs": {"name": 1}},
              "s": {"class_type": "ShowValue", "inputs": {"value": ["v", 0]}}}
    assert ex.execute(prompt).executed == ["v", "s"]
    assert ex.execute(prompt).executed == []
    state["version"] = 2  # e.g. the file on disk changed
    assert ex.execute(prompt).executed == ["v", "s"]
    prompt["v"]["inputs"]["name"] = -1
    assert ex.execute(prompt).executed == ["v", "s"]
    assert ex.execute(prompt).executed == ["v", "s"]  # a NaN fingerprint poisons the key of every descendant


class Blob(Node):
    """Produces a value of `size` bytes (as measured by the cache's sizeof hook)."""

    RETURNS = (Output("BLOB"),)
    size: Annotated[int, Int(min=0)] = 0
    tag: Annotated[float, Float()] = 0.0

    def execute(self, ctx):
        return (bytearray(self.size),)


def blob_prompt(tag, size=400, output="ShowValue"):
    return {"b": {"class_type": "Blob", "inputs": {"size": size, "tag": tag}},
            "s": {"class_type": output, "inputs": {"value": ["b", 0]}}}


class Measure(Node):
    OUTPUT_NODE = True
    RETURNS = ()
    value: Annotated[Any, Socket("BLOB")]

    def execute(self, ctx):
        return NodeOutput(ui={"size": [len(self.value)]})


def test_lru_keeps_other_workflows_while_there_is_room_and_evicts_by_budget(registry):
    registry.register_all([Blob, Measure])
    sizes = lambda outputs: sum(len(v) for slot in outputs for v in slot if isinstance(v, bytearray))  # noqa: E731
    budget = 1000 + 4 * ENTRY_OVERHEAD  # two workflows of two entries each
    cache = ResultCache(max_bytes=budget, sizeof=sizes)
    ex = Executor(registry, cache=cache)
    ex.execute(blob_prompt(1))
    ex.execute(blob_prompt(2))
    assert ex.execute(blob_prompt(1)).executed == []  # both fit: switching back reuses everything
    ex.execute(blob_prompt(3))  # 3 × 400 > 1000: the least recently used workflow (tag 2) loses its blob
    assert cache.total_bytes <= budget
    assert ex.execute(blob_prompt(1, output="Measure")).executed == ["s"]  # blob 1 still cached
    assert ex.execute(blob_prompt(2, output="Measure")).executed == ["b", "s"]  # blob 2 was evicted


def test_the_number_of_entries_is_bounded_too(registry):
    registry.register(Blob)
    cache = ResultCache(max_bytes=10**9, max_entries=4)
    ex = Executor(registry, cache=cache)
    for tag in range(5):
        assert ex.execute(blob_prompt(tag, size=1)).ok
    assert len(cache) == 4
    assert ex.execute(blob_prompt(4, size=1)).executed == []  # the newest workflows stay
    assert ex.execute(blob_prompt(1, size=1)).executed == ["b", "s"]  # the oldest were evicted


def test_entries_of_the_running_prompt_are_never_evicted(registry):
    registry.register(Blob)
    sizes = lambda outputs: sum(len(v) for slot in outputs for v in slot if isinstance(v, bytearray))  # noqa: E731
    ex = Executor(registry, cache=ResultCache(max_bytes=100, sizeof=sizes))
    prompt = {"b": {"class_type": "Blob", "inputs": {"size": 500, "tag": 0}},
              "s1": {"class_type": "ShowValue", "inputs": {"value": ["b", 0]}},
              "s2": {"class_type": "ShowValue", "inputs": {"value": ["b", 0]}}}
    result = ex.execute(prompt)
    assert result.ok and result.executed == ["b", "s1"]  # s2 == s1 by signature; b stayed available


class BlobServices:
    """A node pack's services that say how much a result holds (as the SD pack counts tensor storages)."""

    @staticmethod
    def result_sizeof(outputs):
        return sum(1000 * len(v) for slot in outputs for v in slot if isinstance(v, bytearray))


def test_the_default_cache_measures_results_with_the_services_sizeof_and_fits_the_machine(registry):
    registry.register(Blob)
    registry.services = BlobServices()
    ex = Executor(registry)
    assert ex.execute(blob_prompt(1, size=7)).ok
    # the blob as the services count it (the display node holds nothing), plus each entry's bookkeeping
    assert ex.cache.total_bytes == 7000 + 2 * ENTRY_OVERHEAD
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < ex.cache.max_bytes <= min(8 * 1024**3, ram // 4)
    assert Executor(NodeRegistry()).cache.sizeof is default_sizeof


def test_wrong_return_shape_is_an_execution_error(registry):
    class Broken(Node):
        RETURNS = (Output("INT"), Output("INT"))

        def execute(self, ctx):
            return 5

    registry.register(Broken)
    prompt = {"b": {"class_type": "Broken", "inputs": {}}, "s": {"class_type": "ShowValue", "inputs": {"value": ["b", 1]}}}
    result = Executor(registry).execute(prompt)
    assert result.status == "error" and "must return a tuple of 2 values" in result.error["exception_message"]


def test_a_failing_listener_does_not_break_execution(registry):
    hub = EventHub()
    hub.subscribe(lambda e: 1 / 0)
    result = Executor(registry, events=hub).execute(graph())
    assert result.ok and hub.errors


def test_validated_prompt_can_be_executed_directly(registry):
    v = validate_prompt(graph(), registry)
    assert Executor(registry).execute(v).outputs == {"4": {"text": ["6"]}}


def test_ui_outputs_merge_across_list_calls(registry):
    class Many(Node):
        OUTPUT_NODE = True
        RETURNS = ()
        value: Annotated[Any, Socket("INT")]

        def execute(self, ctx):
            return NodeOutput(ui={"images": [{"filename": f"{self.value}.png"}]})

    registry.register(Many)
    prompt = {"r": {"class_type": "Range", "inputs": {"count": 2}}, "m": {"class_type": "Many", "inputs": {"value": ["r", 0]}}}
    assert Executor(registry).execute(prompt).outputs["m"] == {"images": [{"filename": "0.png"}, {"filename": "1.png"}]}
