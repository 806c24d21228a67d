"""One request of an OIP sequence at a time per front-end (server/oip_sequences.py), also when
a request arrives just as the lock passes from one request to the next: the lock's entry was
dropped while the woken waiter had not yet taken it, and a third request made a new lock and
ran beside that waiter."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from server.oip_sequences import OipSequences


def test_a_request_arriving_at_the_hand_over_waits_its_turn():
    seq = OipSequences(SimpleNamespace(client=SimpleNamespace(clients=[0])))
    lm = SimpleNamespace(name="m")
    rows = np.zeros((4, 1), np.float32)
    active, most, served, tasks = [0], [0], [], []

    async def serve(lm_, sid, sequence_id, start, end, rows_, key, samples_sent=None):
        active[0] += 1
        most[0] = max(most[0], active[0])
        await asyncio.sleep(0.01)
        if not served:  # the first request: the third arrives as it hands the lock over
            asyncio.get_running_loop().call_soon(lambda: tasks.append(asyncio.ensure_future(
                seq.infer(lm, 7, False, False, rows, None))))
        served.append(sequence_id)
        active[0] -= 1
        return "ok"

    seq._serve = serve

    async def main():
        first = asyncio.ensure_future(seq.infer(lm, 7, True, False, rows, None))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(seq.infer(lm, 7, False, False, rows, None))
        await asyncio.gather(first, second)
        await asyncio.gather(*tasks)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert len(served) == 3 and most[0] == 1
    assert seq._locks == {}  # nothing left behind once every request is done
