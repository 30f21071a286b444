"""`dist-lacl train` (the real CLI, exit status included) with SIGUSR1 sent to this process while it runs
one chosen step, as SLURM's warning before the time limit would land.

usage: signal_in_step.py STEP(1-based) train [--config CONFIG] [section.key=value ...]
"""

import os
import signal
import sys

from dist_lacl import cli
from dist_lacl.trainer import Trainer


def main():
    step, argv = int(sys.argv[1]), sys.argv[2:]
    train_step = Trainer.train_step

    def signalled(self):
        if self.state.step + 1 == step:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler sets its flag; the step goes on
        return train_step(self)

    Trainer.train_step = signalled
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    main()
