"""Profile a torch chunking policy stage by stage, through each offload helper, beside the 1 kHz loop.

The policy (the chunk MLP of examples 11, with its work split into stages) offers
preprocess (frame -> features), transfer (to its device), forward (the model) and
postprocess (to a chunk of Actions). profile() times each stage where each helper runs
it (inline, asyncify, CudaInferenceThread, mpify) while a Controller holds the arm on
the embedded simulator, fingerprints the forward pass in each place, and recommends a
helper. The same from the command line:
aiofranka profile examples/16_profile.py:make_policy --iterations 20
Runs against the embedded simulator (on a GPU when there is one): python examples/16_profile.py
"""

import asyncio

import numpy as np
import torch

from aiofranka import Action, Command, Frame, limits
from aiofranka.policy.profiling import fingerprint, profile

CHUNK = 20


class StagedChunkPolicy(torch.nn.Module):
    """Joints and time in, a chunk of joint targets out (fixed random weights: a stand-in)."""

    def __init__(self, hidden: int = 256, seed: int = 0, device: str | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = torch.nn.Sequential(torch.nn.Linear(9, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, CHUNK * 7)).to(self.device).eval()

    def preprocess(self, frame):
        t = frame.meta.get("robot_time_ms", 0) / 1000.0
        return np.concatenate([frame.state["q"], [np.sin(t), np.cos(t)]]).astype(np.float32)

    def transfer(self, features):
        return torch.from_numpy(features).to(self.device)

    def forward(self, x):
        return 0.01 * torch.tanh(self.net(x)).reshape(CHUNK, 7)

    def postprocess(self, offsets):
        targets = limits.Q_HOME + offsets.cpu().numpy()
        return [Action({"arm": Command("joint_position", q)}) for q in targets]


def make_policy(hidden: int = 256, seed: int = 0) -> StagedChunkPolicy:
    """The factory `aiofranka profile` calls (arguments from the command line)."""
    torch.set_num_threads(1)  # leave the other cores to the loop (docs/async.md, small machines)
    return StagedChunkPolicy(hidden, seed)


async def main() -> None:
    policy = make_policy()
    result = await profile(policy, helpers=("inline", "asyncify", "cuda_thread", "mpify"), iterations=20,
                           progress=True)
    print(result.table())
    # A refactor that keeps the maths keeps the fingerprint; a changed weight does not.
    frame = Frame(state={"q": limits.Q_HOME}, meta={"robot_time_ms": 0})
    before = fingerprint(policy, frame)
    with torch.no_grad():
        policy.net[4].bias[0] += 1e-3
    after = fingerprint(policy, frame)
    print(f"after a weight change: outputs {'differ' if after.outputs_sha256 != before.outputs_sha256 else 'SAME'}, "
          f"operators {'same' if after.ops_sha256 == before.ops_sha256 else 'differ'}")


if __name__ == "__main__":
    asyncio.run(main())
