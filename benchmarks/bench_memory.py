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


def _anonymous(nbytes: int, huge: bool) -> mmap.mmap:
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE" if huge else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        region.madvise(advice)
    return region


def _touch_fresh(nbytes: int, huge: bool) -> float:
    """Seconds to first-write ``nbytes`` of a new private anonymous mapping."""
    region = _anonymous(nbytes, huge)
    try:
        buf = np.frombuffer(region, np.uint8)
        seconds = _touch(buf)
        del buf
    finally:
        region.close()
    return seconds


def touch_fresh_seconds(nbytes: int, settle_s: float) -> dict[str, float]:
    """First touch of ``nbytes`` of fresh memory (THP, as NumPy allocates
    large arrays): ``cold`` after ``settle_s`` idle, ``warm`` right after
    freeing the same amount."""
    if settle_s > 0:
        settled_rss()
        time.sleep(settle_s)
    cold = _touch_fresh(nbytes, huge=True)
    warm = _touch_fresh(nbytes, huge=True)
    return {"cold": cold, "warm": warm}


def page_fault_rates(nbytes: int = 256 * MiB, settle_s: float = 3.0) -> dict:
    """First-touch write rates (MiB/s) of fresh private anonymous memory.

    For 4 KiB pages (MADV_NOHUGEPAGE) and transparent huge pages
    (MADV_HUGEPAGE, what NumPy asks for on large arrays): ``cold`` after
    ``settle_s`` seconds idle (on a VM with free page reporting the freed
    memory has gone back to the hypervisor), ``warm`` right after the same
    amount was freed, and ``retouch`` of memory already touched (the plain
    write bandwidth). The gap between first touch and retouch is the
    page-fault cost.
    """
    mib = nbytes / MiB
    out: dict = {"bytes": nbytes, "settle_s": settle_s}
    for path, name in (("/sys/kernel/mm/transparent_hugepage/enabled", "thp_setting"),
                       ("/sys/module/page_reporting/parameters/page_reporting_order",
                        "page_reporting_order")):
        try:
            with open(path) as f:
                out[name] = f.read().strip()
        except OSError:
            out[name] = None
    for huge in (False, True):
        key = "thp" if huge else "4k"
        settled_rss()
        time.sleep(settle_s)
        cold = _touch_fresh(nbytes, huge)
        warm = _touch_fresh(nbytes, huge)
        region = _anonymous(nbytes, huge)
        try:
            buf = np.frombuffer(region, np.uint8)
            _touch(buf)
            retouch = _touch(buf)
            anon_huge = _anon_huge_kib()
            del buf
        finally:
            region.close()
        out[key] = {"cold_MiBps": mib / cold, "warm_MiBps": mib / warm,
                    "retouch_MiBps": mib / retouch,
                    "anon_huge_MiB_while_mapped": (anon_huge or 0) / 1024}
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
