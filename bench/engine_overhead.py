"""Engine overhead on graphs of trivial nodes: per-node execution cost, validation of 1,000 nodes, cached re-run.

Run: python bench/engine_overhead.py   (prints a table; figures are medians over repeats on this machine).
The baseline is calling the same node methods directly in a Python loop, measured in the same run."""

from __future__ import annotations

import statistics
import time

from graphengine import EventHub, Executor, NodeRegistry, ResultCache, validate_prompt
from graphengine.examples import EXAMPLE_NODES, Add, Number


def chain(n: int, salt: int = 0) -> dict:
    prompt = {"0": {"class_type": "Number", "inputs": {"value": salt}}}
    for i in range(1, n - 1):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(n - 2), 0]}}
    return prompt


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    registry = NodeRegistry()
    registry.register_all(EXAMPLE_NODES)
    n = 200

    def direct_loop() -> None:  # baseline: the node work itself, no engine
        value = Number.model_construct(value=0).execute(None)[0]
        for _ in range(n - 2):
            value = Add.model_construct(a=value, b=1).execute(None)[0]

    salts = iter(range(10**9))

    def fresh_run() -> None:  # a new salt each time: nothing is cached
        Executor(registry, ResultCache(), EventHub()).execute(chain(n, next(salts)))

    executor = Executor(registry)
    cached_prompt = chain(n)
    executor.execute(cached_prompt)

    def cached_run() -> None:
        result = executor.execute(cached_prompt)
        assert not result.executed

    big = chain(1000)
    t_direct = median_time(direct_loop, 50)
    t_fresh = median_time(fresh_run, 20)
    t_cached = median_time(cached_run, 50)
    t_validate = median_time(lambda: validate_prompt(big, registry), 20)
    per_node_us = (t_fresh - t_direct) / n * 1e6
    print(f"{'measure':48s} {'value':>12s}")
    print(f"{'direct loop, 200 trivial nodes (baseline)':48s} {t_direct * 1e3:10.3f} ms")
    print(f"{'engine run, 200 trivial nodes, nothing cached':48s} {t_fresh * 1e3:10.3f} ms")
    print(f"{'engine overhead per node':48s} {per_node_us:10.1f} µs")
    print(f"{'fully cached re-run, 200 nodes (target <= 5 ms)':48s} {t_cached * 1e3:10.3f} ms")
    print(f"{'validation, 1,000 nodes (target <= 50 ms)':48s} {t_validate * 1e3:10.3f} ms")
    print(f"{'engine run / direct loop':48s} {t_fresh / t_direct:10.1f} x")


if __name__ == "__main__":
    main()
