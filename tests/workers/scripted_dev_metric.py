"""`dist-lacl train` (the real CLI) whose dev metric follows a script: the test seam of keep_best.

Trainer.evaluate runs as usual, then its `eval/ndcg@10/macro` is replaced by SCORES[step] (a JSON
object of step -> score), so where the metric peaks is the test's choice, not training's. With
STOP_STEP > 0, SIGUSR1 lands in that step's evaluation, as SLURM's warning would: the run checkpoints
after the step and exits 3, to be resumed by running the same command again.

usage: scripted_dev_metric.py SCORES_JSON STOP_STEP train [--config CONFIG] [section.key=value ...]
"""

import json
import os
import signal
import sys

from dist_lacl import cli
from dist_lacl.trainer import Trainer

SCRIPTED = "eval/ndcg@10/macro"


def main():
    scores, stop_step, argv = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    evaluate = Trainer.evaluate

    def scripted(self):
        result = evaluate(self)
        result[SCRIPTED] = scores[str(self.state.step)]
        if self.state.step == stop_step:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler sets its flag; the step goes on
        return result

    Trainer.evaluate = scripted
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    main()
