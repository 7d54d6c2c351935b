"""The seed's VirtualTask, unchanged, run through a cachesaver pipeline.

``VirtualTask`` below is the AgentBench seed's example task, copied as written (including its
prints and its one-second sleep per turn). Run it with the CLI::

    cachesaver run examples/virtual_task.py:VirtualTask --out out --namespace demo --concurrency 10

or run this script, which does the same on the embedded simulated backend (no API key).
"""

import asyncio
import sys
from typing import Any, Dict, List

import anyio

from cachesaver.tasks import Session, SampleStatus, Task, TaskOutput, TaskSampleExecutionResult


class VirtualTask(Task):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(name="virtual-task", *args, **kwargs)

    def get_indices(self) -> List[Any]:
        return list(range(10))

    async def start_sample(self, index, session: Session):
        print("task start sample")
        for loop_times in range(3):
            await asyncio.sleep(1)
            res = await session.action(
                {"role": "user", "content": "Loop: %d" % loop_times}
            )
            print("TASK", res.content)
        return TaskSampleExecutionResult(
            status=SampleStatus.COMPLETED,
            result={"result": "ok"},
        )

    def calculate_overall(self, results: List[TaskOutput]) -> Dict[str, Any]:
        return {"score": 0.4}


async def main(out_dir: str = "out", cache_dir: str = "caches/examples") -> None:
    from cachesaver.models.simulated import SimulatedLLM
    from cachesaver.pipelines import OnlineAPI
    from cachesaver.tasks import PipelineAgent, run_task

    async with OnlineAPI(SimulatedLLM(seed=0), cache_dir, batch_size=10) as pipeline:
        agent = PipelineAgent(pipeline, namespace="virtual-demo", model="simulated")
        summary = await run_task(VirtualTask(), agent, out_dir, concurrency=10, ledger=pipeline.ledger)
    print(summary.render())


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:], backend="asyncio")
