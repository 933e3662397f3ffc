"""The worker's batch scheduler shares the model evenly among sessions streaming at once.

A simulated clock in rounds: each round the scheduler takes one batch; a session served in round r has its next frame
pending `delay` rounds later (the round trip to the browser and back).  Least-recently-served ordering locked 50 such
sessions into two groups served every 6 and every 7 batches (fairness 0.85, as `bench/load.py` measured at 50
sessions); start-time fair queuing serves them equally.
"""

from __future__ import annotations

from fake_engine import FakeEngine

from server.metrics import Metrics
from server.worker import Job, Worker


class SimulatedSession:
    """A source whose next frame is pending from round `ready_at` on."""

    round = 0

    def __init__(self, delay: int, ready_at: int = 0):
        self.delay, self.ready_at, self.last_served, self.served = delay, ready_at, 0.0, 0

    @property
    def pending(self) -> bool:
        return SimulatedSession.round >= self.ready_at

    def take_job(self) -> Job | None:
        if not self.pending:
            return None
        self.ready_at = 1 << 62
        return Job(request=None, received_at=0.0, on_done=lambda result: None, tag=self)

    def return_job(self, job: Job) -> None:
        self.ready_at = SimulatedSession.round


def simulate(sessions: list[SimulatedSession], rounds: int, max_batch: int = 8, worker: Worker | None = None) -> Worker:
    worker = worker or Worker(FakeEngine(key=lambda request: 0), Metrics(), max_batch=max_batch, overlap=False)
    for session in sessions:
        if session not in worker._sources:
            worker.register(session)
    start = SimulatedSession.round
    for r in range(start, start + rounds):
        SimulatedSession.round = r
        for job in worker._next_batch():
            job.tag.served += 1
            job.tag.ready_at = r + job.tag.delay
    SimulatedSession.round = start + rounds
    return worker


def fairness(sessions: list[SimulatedSession]) -> float:
    counts = [s.served for s in sessions]
    return min(counts) / max(counts)


def test_fifty_sessions_with_the_same_round_trip_get_equal_shares():
    SimulatedSession.round = 0
    sessions = [SimulatedSession(delay=5) for _ in range(50)]
    simulate(sessions, 2000)
    assert fairness(sessions) >= 0.99, sorted({s.served for s in sessions})


def test_mixed_round_trips_still_share_evenly_while_everyone_keeps_up():
    SimulatedSession.round = 0
    sessions = [SimulatedSession(delay=6 if i % 3 == 0 else 5) for i in range(50)]
    simulate(sessions, 2000)
    assert fairness(sessions) >= 0.99


def test_a_latecomer_starts_level_and_does_not_take_over():
    SimulatedSession.round = 0
    early = [SimulatedSession(delay=3) for _ in range(12)]
    worker = simulate(early, 500, max_batch=4)
    late = SimulatedSession(delay=3, ready_at=500)
    before = [s.served for s in early]
    simulate([*early, late], 300, max_batch=4, worker=worker)
    gained = [s.served - b for s, b in zip(early, before, strict=True)]
    # 13 sessions share 4 slots per round: about 92 frames each in 300 rounds, the latecomer no more than the rest
    assert late.served <= max(gained) + 1 and min(gained) >= 0.95 * late.served, (late.served, gained)


def test_a_slow_sender_is_served_as_soon_as_its_frame_arrives():
    SimulatedSession.round = 0
    busy = [SimulatedSession(delay=1) for _ in range(16)]
    slow = SimulatedSession(delay=40)
    simulate([*busy, slow], 400, max_batch=4)
    assert slow.served >= 9  # every 40 rounds, taken in the round its frame arrives (or the next)
