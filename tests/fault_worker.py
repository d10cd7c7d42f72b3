"""torchrun worker of the fault test: ``method.train`` whose process ``KILL_RANK`` dies by SIGKILL.

With ``DLDKD_TEST_KILL=RANK:EPOCH`` in the environment, process RANK kills
itself at the start of epoch EPOCH on the group's first attempt only
(torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0), as a crashed GPU or an
out-of-memory kill would; a restarted group runs normally. Without the
variable this is plain ``python -m method.train``.
"""
import os
import signal
import sys

from method import train
from method.training import loop


def main() -> None:
    spec = os.environ.get("DLDKD_TEST_KILL")
    if spec:
        kill_rank, kill_epoch = map(int, spec.split(":"))
        real = loop.train_one_epoch

        def dying(r, epoch, *args, **kwargs):
            first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            if first_attempt and epoch == kill_epoch and r.dist.rank == kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(r, epoch, *args, **kwargs)

        loop.train_one_epoch = dying
    train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
