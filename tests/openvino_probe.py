"""Run in a fresh process by tests/test_engines.py: what can only go wrong once per process
(OpenVINO's first use from several threads) or can kill it (a signal on a freed stack).

    python openvino_probe.py threads GRAPH   8 threads make their first inference together
    python openvino_probe.py signals GRAPH   models released in the order made, then a signal
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading

import numpy as np

from s4seg.engines import open_session, signal_stack


def threads(graph: str) -> None:
    session = open_session(graph, "openvino", "fp32")
    start = threading.Barrier(8)
    x = np.zeros((1, 3, 16, 16), np.float32)
    shapes: list[tuple[int, ...]] = []

    def first_inference() -> None:
        start.wait()
        shapes.append(session.run(None, {"x": x})[0].shape)

    workers = [threading.Thread(target=first_inference) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert shapes == [(1, 4, 16, 16)] * 8, shapes


def signals(graph: str) -> None:
    import faulthandler

    faulthandler.enable()  # the alternate stack Python's own handlers run on
    before = signal_stack()
    x = np.zeros((1, 3, 16, 16), np.float32)
    for _ in range(3):
        first, second = (open_session(graph, "openvino", "fp32") for _ in range(2))
        first.run(None, {"x": x})
        second.run(None, {"x": x})
        del first
        gc.collect()
        del second
        gc.collect()
        assert signal_stack() == before, (signal_stack(), before)
        ballast = [bytearray(1 << 16) for _ in range(256)]  # reuse what was freed
        del ballast
    received = []
    signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert received == [True]


if __name__ == "__main__":
    {"threads": threads, "signals": signals}[sys.argv[1]](sys.argv[2])
    print("ok")
