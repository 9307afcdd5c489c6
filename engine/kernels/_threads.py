"""Thread count per step, chosen from the times of the steps themselves.

A parallel sweep ends every split layer at a barrier, so when another process
holds one of the cores the second thread is descheduled for whole time
slices and each barrier waits for it: issue 14 measured a 2-thread step
swinging between 12 and 177 ms where one thread took 9-16 ms. A thread count
fixed in advance (or calibrated on a quiet machine) cannot follow load that
comes and goes, so the fast backends time every step (a ``perf_counter``
pair, ~0.1 us) and ``ThreadChooser`` picks the count of the next one:

* it runs the larger count and, every so many steps, one step at the other
  count; it switches when that probe beats the last steps of the current
  count (the mean of the last two of the same kind: under changing load
  only the latest steps say what the current count costs now) by
  ``SWITCH_MARGIN``;
* a step slower than ``ANOMALY`` times the recent median (load arrived)
  makes the next step a probe of one thread at once (when running more);
* steps are compared only with steps of the same kind (``phase``: the
  single-pass schedule alternates two sweeps of different cost);
* a probe that loses by a wide margin doubles the interval to the next
  probe (up to ``PROBE_MAX``), and stretches it so that probes cost at most
  ~``PROBE_COST`` of the time (a 2-thread probe under load can take 100x a
  step), so a quiet machine pays well under 1%.

The thread count never changes a result (the kernels split work so that
every number is computed the same way by any thread; tests check this bit
for bit), so switching is invisible except in time.
"""
from __future__ import annotations

import collections
import statistics

# A probe must beat the current count's recent median by this factor to win.
SWITCH_MARGIN = 0.92
# A step this many times slower than the recent median triggers a probe.
ANOMALY = 1.6
# Steps between probes: at start, after a switch or an anomaly; doubled
# after each probe the current count wins by more than LOSE_WIDE, up to PROBE_MAX.
PROBE_FIRST = 3
PROBE_EVERY = 16
PROBE_MAX = 512
LOSE_WIDE = 1.3
# Probes that lose take at most about this fraction of the time.
PROBE_COST = 0.05
# Recent steps kept per (threads, phase).
HISTORY = 7


class ThreadChooser:
    """Chooses between 1 and ``max_threads`` threads for each step."""

    def __init__(self, max_threads: int):
        self.max_threads = max(1, int(max_threads))
        self.current = self.max_threads
        self.times = collections.defaultdict(lambda: collections.deque(maxlen=HISTORY))
        self.interval = PROBE_EVERY
        self.countdown = PROBE_FIRST
        self.probing = None            # the count being probed in this step, or None
        self.switches = 0

    def _other(self):
        return 1 if self.current != 1 else self.max_threads

    def pick(self, phase=None) -> int:
        """Threads for the next step (of kind ``phase``). A probe waits until
        the current count has two steps of that kind to compare it with: the
        first steps after a network is bound (first touch of its buffers, a
        rebuilt chain) are not what a step costs."""
        if self.max_threads == 1:
            return 1
        if self.countdown <= 0 and len(self.times[(self.current, phase)]) >= 2:
            self.probing = self._other()
            return self.probing
        return self.current

    def record(self, threads: int, phase, seconds: float) -> None:
        """The step just run took ``seconds`` with ``threads`` threads."""
        if self.max_threads == 1:
            return
        own = self.times[(threads, phase)]
        if self.probing is not None and threads == self.probing:
            self.probing = None
            ref = list(self.times[(self.current, phase)])[-2:]
            own.append(seconds)
            now = sum(ref) / len(ref) if ref else None
            if now is not None and seconds < SWITCH_MARGIN * now:
                self.current = threads
                self.switches += 1
                self.interval = PROBE_EVERY
            elif now is not None and seconds > LOSE_WIDE * now:
                stretch = int(seconds / (PROBE_COST * now)) if now > 0 else PROBE_MAX
                self.interval = max(min(PROBE_MAX, 2 * self.interval), stretch)
            self.countdown = self.interval
            return
        if self.current > 1 and len(own) >= 3 and seconds > ANOMALY * statistics.median(own):
            self.countdown = 0             # load arrived: probe one thread next
            self.interval = PROBE_EVERY
        else:
            self.countdown -= 1
        own.append(seconds)
