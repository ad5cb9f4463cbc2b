"""Host memory: peak RSS around a call, memcpy and page-fault rates.

Peak memory is read from the kernel, not sampled: writing "5" to
``/proc/self/clear_refs`` resets ``VmHWM`` (the process's resident-set
high-water mark, all threads included) to the current RSS, and ``VmHWM`` read
after the call is the exact peak. Where that file cannot be written (not
Linux, or an old kernel) a thread samples ``VmRSS`` every millisecond
instead, which can miss short peaks; ``PeakRSS.method`` says which was used.
"""

from __future__ import annotations

import gc
import mmap
import threading
import time

import numpy as np

MiB = 1 << 20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakRSS:
    """``with PeakRSS() as p: ...`` then ``p.extra``: peak RSS minus RSS at entry."""

    method = "VmHWM after clear_refs=5" if _reset_hwm() else "VmRSS sampled every 1 ms"

    def __enter__(self) -> "PeakRSS":
        self.start = rss_bytes()
        self._stop = threading.Event()
        self._peak = self.start
        if self.method.startswith("VmHWM"):
            _reset_hwm()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            self.peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._peak, rss_bytes())
        self.extra = max(0, self.peak - self.start)


def settled_rss() -> int:
    """RSS after a full garbage collection."""
    gc.collect()
    return rss_bytes()


def memcpy_times(host_leaves: list[np.ndarray]) -> dict[str, float]:
    """Seconds to copy every leaf into fresh buffers, and into reused (touched) ones."""
    t = time.perf_counter()
    fresh = [np.empty_like(x) for x in host_leaves]
    for dst, src in zip(fresh, host_leaves):
        np.copyto(dst, src)
    t_fresh = time.perf_counter() - t
    # `fresh` is now touched: copying again measures the copy alone.
    t = time.perf_counter()
    for dst, src in zip(fresh, host_leaves):
        np.copyto(dst, src)
    t_reused = time.perf_counter() - t
    del fresh
    return {"fresh": t_fresh, "reused": t_reused}


def _touch(buf: np.ndarray) -> float:
    t = time.perf_counter()
    buf.fill(1)
    return time.perf_counter() - t


def page_fault_rates(nbytes: int = 256 * MiB) -> dict:
    """First-touch and re-touch write rates (MiB/s) of fresh anonymous memory:
    malloc'd (np.empty: 4 KiB pages unless THP is "always") and mmap'd with
    madvise(MADV_HUGEPAGE). The gap between first and second touch is the
    page-fault cost."""
    out: dict = {"bytes": nbytes}
    mib = nbytes / MiB
    buf = np.empty(nbytes, np.uint8)
    first, second = _touch(buf), _touch(buf)
    del buf
    out["np_empty"] = {"first_touch_MiBps": mib / first, "retouch_MiBps": mib / second,
                       "fault_s_per_GiB": (first - second) / mib * 1024}
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            out["thp_setting"] = f.read().strip()
    except OSError:
        out["thp_setting"] = None
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return out
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)
        buf = np.frombuffer(region, np.uint8)
        first = _touch(buf)
        huge = _anon_huge_kib()
        second = _touch(buf)
        del buf
    finally:
        region.close()
    out["thp_madvise"] = {"first_touch_MiBps": mib / first, "retouch_MiBps": mib / second,
                          "fault_s_per_GiB": (first - second) / mib * 1024,
                          "anon_huge_MiB_while_mapped": (huge or 0) / 1024}
    return out


def _anon_huge_kib() -> int | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
