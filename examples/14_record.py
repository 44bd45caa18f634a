"""Record every cycle of a move, save it and plot it (the 1 kHz recorder).

Runs against the embedded simulator: python examples/14_record.py [out_dir]
Writes out_dir/move.npz and out_dir/move.png (default: a new temporary directory);
`aiofranka report out_dir/move.npz` plots the saved file again. The plot needs
`pip install 'aiofranka[report]'`.
"""

import asyncio
import pathlib
import sys
import tempfile
import time

from aiofranka import Controller, Robot, limits
from aiofranka.loop.recorder import SERVERS

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None


async def main(out: pathlib.Path) -> None:
    with Robot() as robot:  # no address: start the embedded franka-sim
        async with Controller(robot) as controller:
            await controller.move(limits.Q_HOME)
            target = limits.Q_HOME.copy()
            target[0] += 0.3
            target[3] += 0.2
            # Every field of every cycle, into a ring of 4 s (4,000 rows).
            with controller.record(seconds=4.0) as rec:
                move = asyncio.create_task(controller.move(target, speed=0.5))
                bar = tqdm(total=rec.capacity, desc="recording", unit="row") if tqdm else None
                while not move.done():
                    await asyncio.sleep(0.1)
                    if bar:
                        bar.n = rec.count
                        bar.refresh()
                await move
                time.sleep(0.05)  # block the event loop once: the guardian serves these cycles
                await controller.wait(0.5)
                if bar:
                    bar.n = rec.count
                    bar.close()
            data = rec.data()  # numpy arrays, one per field
        served = {name: int((data["server"] == code).sum()) for code, name in enumerate(SERVERS)}
        print(f"{rec.count} rows from robot time {data['time_ms'][0]} to {data['time_ms'][-1]} ms, "
              f"{rec.dropped} dropped; served by {served}")
        print(rec.table())
        print(f"saved {rec.save(out / 'move.npz')}")
        try:
            print(f"plotted {rec.plot(out / 'move.png', title='a joint move on the simulator')}")
        except ImportError as exc:  # MissingDependencyError: aiofranka[report] is not installed
            print(exc)


if __name__ == "__main__":
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="aiofranka-record-"))
    directory.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(directory))
