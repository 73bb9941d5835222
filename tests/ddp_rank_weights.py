"""``s4seg`` under torchrun, each rank also writing its final weights (``rank<N>.pt`` beside the
checkpoint): DistributedDataParallel keeps the replicas equal, separate processes would not."""

import sys

import torch

from s4seg.training import training_run
from s4seg.workflows.cli import main

_loop = training_run.TrainingRun.loop


def loop(self, step, description):
    last = _loop(self, step, description)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(self.model.state_dict(), self.out_dir / f"rank{self.runtime.rank}.pt")
    return last


training_run.TrainingRun.loop = loop

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
