"""The bench's table: rows, targets and footnotes, from a report dict.

``render(report)`` gives the text ``bench.py`` prints; it works on a report
loaded back from the JSON too (``bench.py --render PATH``).
"""

from __future__ import annotations

import os
import statistics
from typing import Any

MiB = 1 << 20
# Buffered writes: issue 3's "raw write+fsync"; "limit" is the fastest of them.
LIMITS = ("raw_per_leaf", "raw_threads", "raw_packed")


def stat(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "samples": xs}


def med(s: dict | None) -> float | None:
    return None if s is None else s["median"]


def _num(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}" if a >= 0.01 else f"{v:.2g}"


def cell(s: dict | None, unit: float = 1e3) -> str:
    """``median [min-max]`` of seconds (shown as ms with unit=1e3)."""
    if s is None:
        return "-"
    if s["n"] == 1:
        return _num(s["median"] * unit)
    return f"{_num(s['median'] * unit)} [{_num(s['min'] * unit)}-{_num(s['max'] * unit)}]"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"



class Table:
    """Rows of (metric, limit, orbax, jaxckpt, j/orbax, j/limit, target, ok)."""

    HEAD = ("", "limit", "orbax", "jaxckpt", "j/orbax", "j/limit", "target", "ok")

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def section(self, title: str) -> None:
        self.rows.append((title,))

    def row(self, *cells: str) -> None:
        self.rows.append(tuple(cells) + ("",) * (len(self.HEAD) - len(cells)))

    def render(self) -> str:
        body = [r for r in self.rows if len(r) > 1]
        widths = [max(len(str(r[i])) for r in body + [self.HEAD]) for i in range(len(self.HEAD))]
        lines = []
        fmt = lambda r: "  ".join(  # noqa: E731
            str(c).ljust(w) if i == 0 else str(c).rjust(w) if i < 6 else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        lines.append(fmt(self.HEAD))
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            lines.append(r[0] if len(r) == 1 else fmt(r))
        return "\n".join(lines)


def _verdict(ok: bool | None, full_scale: bool) -> str:
    if ok is None:
        return "-"
    if not full_scale:
        return "n/a"
    return "ok" if ok else "MISS"


def _err_or(res: dict, key: str, text: str) -> str:
    err = res["contenders"].get(key, {}).get("error")
    return f"FAILED ({err.split(':')[0]})" if err and text == "-" else text


# Targets: (workload, metric) -> (text, test on jaxckpt's median seconds/bytes
# given the workload's results, the limit it is measured against: a LIMITS key
# or "raw_direct", None for the fastest buffered one). Issue 17's replace
# issue 3's where both set one. Absolute times hold at scale 1; ratios to a
# limit at any scale.
def _lim(res: dict, field: str, key: str | None) -> float | None:
    keys = LIMITS if key is None else (key,)
    return min((med(res["contenders"][k].get(field)) for k in keys
                if med(res["contenders"].get(k, {}).get(field)) is not None), default=None)


def _times(factor: float, field: str, key: str | None = None) -> Any:
    return lambda v, res: v <= factor * _lim(res, field, key)


def _targets() -> dict:
    return {
        ("W1", "block"): ("<= 10 ms", lambda v, res: v <= 0.010, None),
        ("W1", "commit"): ("<= 1.1x limit", _times(1.1, "commit"), None),
        ("W1", "restore"): ("<= 1.2x 8-thread read", _times(1.2, "restore", "raw_threads"),
                            "raw_threads"),
        ("W2", "block"): ("<= 10 ms", lambda v, res: v <= 0.010, None),
        ("W2", "commit"): ("<= 1.2x O_DIRECT packed", _times(1.2, "commit", "raw_direct"),
                           "raw_direct"),
        ("W2", "restore"): ("<= 2x file-per-leaf read", _times(2.0, "restore", "raw_per_leaf"),
                            "raw_per_leaf"),
        ("W3", "commit"): ("<= 1.5x limit", _times(1.5, "commit"), None),
        ("W1", "peak"): ("<= 10% of state", lambda v, res: v <= 0.10 * res["bytes"], None),
        ("W2", "peak"): ("<= 10% of state", lambda v, res: v <= 0.10 * res["bytes"], None),
    }


LIMIT_NAMES = {"raw_per_leaf": "file/leaf", "raw_threads": "8 threads", "raw_packed": "packed",
               "raw_direct": "O_DIRECT packed"}


def storage_rows(t: Table, name: str, res: dict, full: bool) -> None:
    targets = _targets()
    t.section(f"{name}: {res['tree']}")
    c = res["contenders"]

    def best(field: str, key: str | None) -> tuple[dict | None, str]:
        keys = LIMITS if key is None else (key,)
        options = [(c[k][field], k) for k in keys if c.get(k, {}).get(field)]
        if not options:
            return None, ""
        s, k = min(options, key=lambda o: o[0]["median"])
        return s, LIMIT_NAMES[k]

    for field, label in (("block", "save() blocks the caller, ms"),
                         ("commit", "save -> committed, ms"),
                         ("restore", "restore with target, ms")):
        text, test, key = targets.get((name, field), ("", None, None))
        limit, which = best(field, key) if field != "block" else (None, "")
        o, j = c["orbax"].get(field), c["jaxckpt"].get(field)
        ok = None
        if test is not None and med(j) is not None:
            try:
                ok = bool(test(med(j), res))
            except TypeError:  # the limit failed (O_DIRECT on tmpfs)
                ok = None
        lim_txt = "- (sync)" if field == "block" else (
            f"{cell(limit)} {which}" if limit else "-")
        t.row(f"  {label}", lim_txt, _err_or(res, "orbax", cell(o)),
              _err_or(res, "jaxckpt", cell(j)), ratio(med(j), med(o)),
              ratio(med(j), med(limit)) if field != "block" else "-", text,
              _verdict(ok, full or "x " in text))

    off = c.get("jaxckpt_full")
    if off is not None:  # issue 16: incremental on (default) against off, all bytes changed
        for field, label in (("block", "save() blocks, incremental=False, ms"),
                             ("commit", "save -> committed, incremental=False, ms")):
            on, o = med(c["jaxckpt"].get(field)), med(off.get(field))
            ok = None if on is None or o is None else on <= 1.03 * o
            t.row(f"  {label}", "", "", _err_or(res, "jaxckpt_full", cell(off.get(field))), "",
                  "", f"on <= 1.03x off (on/off {ratio(on, o)})", _verdict(ok, True))

    def mib(s: dict | None) -> str:
        return cell(s, 1 / MiB) if s else "-"

    pj = c["jaxckpt"].get("save_peak_extra_bytes")
    text, test, _ = targets.get((name, "peak"), ("", None, None))
    ok = bool(test(med(pj), res)) if test and pj else None
    t.row("  peak host mem above state in save, MiB",
          mib(c["raw_per_leaf"].get("save_peak_extra_bytes")),
          mib(c["orbax"].get("save_peak_extra_bytes")), mib(pj),
          ratio(med(pj), med(c["orbax"].get("save_peak_extra_bytes"))), "",
          text, _verdict(ok, True))
    t.row("  peak host mem above state in restore, MiB",
          mib(c["raw_per_leaf"].get("restore_peak_extra_bytes")),
          mib(c["orbax"].get("restore_peak_extra_bytes")),
          mib(c["jaxckpt"].get("restore_peak_extra_bytes")))
    files = lambda k: str(c[k]["files"]) if c[k].get("files") is not None else "-"  # noqa: E731
    t.row("  files per checkpoint (limit: file per leaf / packed)",
          f"{files('raw_per_leaf')} / {files('raw_packed')}",
          files("orbax"), files("jaxckpt"))
    jc, jr = med(c["jaxckpt"].get("commit")), med(c["jaxckpt"].get("restore"))
    for k, label in (("raw_per_leaf", "write+fsync, file per leaf"),
                     ("raw_threads", "write+fsync, file per leaf, 8 threads"),
                     ("raw_packed", "write+fsync, one packed file"),
                     ("raw_direct", "O_DIRECT write+fsync, packed")):
        t.row(f"  limit: {label}, ms", _err_or(res, k, cell(c[k].get("commit"))), "", "", "",
              ratio(jc, med(c[k].get("commit"))))
    for k, label in (("raw_per_leaf", "read, file per leaf"),
                     ("raw_threads", "read, file per leaf, 8 threads"),
                     ("raw_packed", "read, one packed file"),
                     ("raw_direct", "O_DIRECT read, packed")):
        t.row(f"  limit: {label}, ms", _err_or(res, k, cell(c[k].get("restore"))), "", "", "",
              ratio(jr, med(c[k].get("restore"))))
    if res.get("touch_cold"):
        t.row("  limit: fault in state-size memory, cold, ms", cell(res["touch_cold"]))
        t.row("  limit: fault in state-size memory, warm, ms", cell(res["touch_warm"]))
    t.row("  limit: memcpy into fresh buffers, ms", cell(res["memcpy_fresh"]))
    t.row("  limit: memcpy into reused buffers, ms", cell(res["memcpy_reused"]))


def finetune_rows(t: Table, res: dict, full: bool) -> None:
    """W5 (issue 16): a frozen base, only adapters and moments change."""
    c = res["contenders"]
    changed = res["changed_bytes"]
    t.section(f"W5: LoRA fine-tune, {res['tree']}; {changed / MiB:.1f} MiB in "
              f"{res['changed_leaves']} leaves change between saves; {res['saves']} saves, "
              "all kept; limit: raw write+fsync of only the changed leaves")
    j, f, o = c["jaxckpt"], c["jaxckpt_full"], c["orbax"]
    raws = [c[k] for k in ("raw_changed_packed", "raw_changed_per_leaf") if c[k].get("commit")]
    raw = min(raws, key=lambda r: r["commit"]["median"]) if raws else {}
    mb = lambda s: cell(s, 1 / MiB) if s else "-"  # noqa: E731
    num = lambda v: "-" if v is None else _num(v / MiB)  # noqa: E731
    err = lambda k, text: _err_or(res, k, text)  # noqa: E731

    def row(label: str, field: str, fmt: Any, target: str = "", ok: bool | None = None) -> None:
        jv, ov, lv = med(j.get(field)), med(o.get(field)), med(raw.get(field))
        t.row(f"  {label}", fmt(raw.get(field)), err("orbax", fmt(o.get(field))),
              err("jaxckpt", fmt(j.get(field))), ratio(jv, ov), ratio(jv, lv), target,
              _verdict(ok, True))
        if field in f:
            t.row(f"  {label}, incremental=False", "", "", err("jaxckpt_full", fmt(f.get(field))),
                  ratio(med(f.get(field)), ov), ratio(med(f.get(field)), lv))

    manifest = j.get("manifest_bytes") or 0
    bound = 1.1 * (changed + manifest)
    jw = med(j.get("written"))
    row("bytes written per save (new blocks on disk, du), MiB", "written", mb,
        f"<= 1.1x (changed + manifest) = {num(bound)}",
        None if jw is None else jw <= bound)
    if j.get("stats_written"):
        t.row("  last_save_stats bytes_written / bytes_shared, MiB", "", "",
              f"{mb(j['stats_written'])} / {mb(j['stats_shared'])}")
    t.row("  changed bytes / manifest, MiB", num(changed), "", f"{num(changed)} / {num(manifest)}")
    row("save() blocks the caller, ms", "block", cell)
    fc, jc = med(f.get("commit")), med(j.get("commit"))
    row("save -> committed, ms", "commit", cell,
        f"<= 5% of incremental=False ({ratio(jc, fc)})",
        None if jc is None or fc is None else jc <= 0.05 * fc)
    fs = lambda r: "-" if r.get("first_commit") is None else _num(r["first_commit"] * 1e3)  # noqa: E731
    t.row("  first save (nothing to share) -> committed, ms", fs(raw), err("orbax", fs(o)),
          err("jaxckpt", fs(j)))
    t.row("  first save, incremental=False, ms", "", "", err("jaxckpt_full", fs(f)))
    row("restore with target, ms (limit: read of the changed files)", "restore", cell)
    du = lambda r: num(r.get("du_after"))  # noqa: E731
    one = f.get("du_checkpoint")
    ok = None if j.get("du_after") is None or not one else j["du_after"] <= 1.2 * one
    t.row(f"  disk used after {res['saves']} saves (du), MiB", du(raw), err("orbax", du(o)),
          err("jaxckpt", du(j)), ratio(j.get("du_after"), o.get("du_after")),
          ratio(j.get("du_after"), raw.get("du_after")),
          f"<= 1.2x one full checkpoint ({ratio(j.get('du_after'), one)})", _verdict(ok, True))
    t.row(f"  disk used after {res['saves']} saves, incremental=False, MiB", "", "",
          err("jaxckpt_full", du(f)))
    t.row("  one full checkpoint (du, incremental=False), MiB", "", "", num(one))


def train_rows(t: Table, res: dict, full: bool) -> None:
    c = res["contenders"]
    t.section(f"W4: jitted Flax MLP (width {res['width']}) + optax Adam, "
              f"{res['state_bytes'] / MiB:.1f} MiB state in {res['leaves']} leaves, "
              f"{res['steps']} steps, checkpoint every {res['every']}, donated state")
    base = med(c["none"]["step"])
    cells = {k: _err_or({"contenders": c}, k, cell(c[k]["step"])) for k in c}
    t.row("  step time, ms (limit: no checkpointing)", cells["none"], cells["orbax"],
          cells["jaxckpt"], ratio(med(c["jaxckpt"]["step"]), med(c["orbax"]["step"])),
          ratio(med(c["jaxckpt"]["step"]), base))
    if "sync" in c:
        t.row("  step time, sync only (block_until_ready at each save point), ms",
              cells["sync"])

    def over(k: str) -> float | None:
        if c[k].get("overhead"):  # the median of per-repetition ratios
            return med(c[k]["overhead"])
        v = med(c[k]["step"])
        return None if v is None or not base else v / base - 1

    fmt = lambda v: "-" if v is None else f"{v * 100:+.1f}%"  # noqa: E731
    oj = over("jaxckpt")
    t.row("  step-time overhead vs none (limit: sync only)", fmt(over("sync")),
          fmt(over("orbax")), fmt(oj), "", "", "<= 2%",
          _verdict(None if oj is None else oj <= 0.02, full))
    t.row("  save() returns after, per save (incl. waiting for queued steps), ms", "",
          cell(c["orbax"].get("blocked_per_save")), cell(c["jaxckpt"].get("blocked_per_save")))
    t.row("  wait for the last save after the loop, ms", "", cell(c["orbax"]["drain"]),
          cell(c["jaxckpt"]["drain"]))
    a = res.get("auto")
    if a and a.get("error"):
        t.section(f"  checkpoint_interval='auto': FAILED: {a['error']}")
    elif a:
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"  # noqa: E731
        write = ms(a["write_s"]) if a["write_s"] is not None else \
            f"{ms(a.get('last_write_s'))} (finished after the choice)"
        t.section(f"  checkpoint_interval='auto' (mtbf {a['mtbf_s']:g} s): {a['steps']} steps "
              f"({a['bound']}); measured cost (blocked) {a['cost_s'] * 1e3:.2f} ms, write "
              f"{write}, step {a['step_s'] * 1e3:.2f} ms, overhead {a['overhead']:.3%}; "
              f"{a['saves']} save(s) in {res['steps']} steps")


def process_rows(t: Table, imports: dict | None, grow: dict | None, fsync: dict | None,
                 faults: dict | None) -> None:
    t.section("Process and host")
    if imports:
        jx, jc, ob = (imports.get(m, {}) for m in ("jax", "jaxckpt", "orbax.checkpoint"))
        s = lambda d: "-" if "median" not in d else cell(d)  # noqa: E731
        ok = None
        if "median" in jx and "median" in jc:
            ok = jc["median"] <= jx["median"] + 0.150
        t.row("  import time, ms (limit: import jax)", s(jx), s(ob), s(jc),
              ratio(jc.get("median"), ob.get("median")), ratio(jc.get("median"), jx.get("median")),
              "<= jax + 150 ms", _verdict(ok, True))
        aj, ao = imports.get("jaxckpt after jax", {}), imports.get("orbax.checkpoint after jax", {})
        ok = aj["median"] <= 0.150 if "median" in aj else None
        t.row("  import after jax in the same process, ms", "", s(ao), s(aj),
              ratio(aj.get("median"), ao.get("median")), "", "<= +150 ms", _verdict(ok, True))
        an = imports.get("jaxckpt after jax (no bytecode cache)")
        if an:
            t.row("  import after jax, no .pyc (PYTHONDONTWRITEBYTECODE=1), ms", "", "",
                  s(an), "", "", "(compiles from source)")
    if grow:
        g = lambda k: ("FAILED" if grow[k].get("error") else  # noqa: E731
                       f"{grow[k]['growth_bytes'] / MiB:+.2f}")
        ok = None if grow["jaxckpt"].get("error") else grow["jaxckpt"]["growth_bytes"] <= 2 * MiB
        t.row("  RSS growth save 1 -> 50 (W3 tree), MiB", "", g("orbax"), g("jaxckpt"), "", "",
              "no growth (<= 2 MiB)", _verdict(ok, True))
    if fsync:
        def fs(k: str) -> str:
            r = fsync.get(k, {})
            if "error" in r:
                return "?"
            return (f"{r['files_fsynced']}/{r['files']} files"
                    f"{', rename synced' if r['commit_rename_then_parent_fsync'] else ', rename NOT synced'}")
        t.row("  fsync'd files / commit rename durable", "", fs("orbax"), fs("jaxckpt"))
    if faults:
        f4, fh = faults.get("4k", {}), faults.get("thp", {})
        r = lambda d, k: f"{d[k]:.0f}" if k in d else "-"  # noqa: E731
        t.row("  first touch of fresh memory, MiB/s: cold (4K / THP)",
              f"{r(f4, 'cold_MiBps')} / {r(fh, 'cold_MiBps')}")
        t.row("  first touch of fresh memory, MiB/s: warm (4K / THP)",
              f"{r(f4, 'warm_MiBps')} / {r(fh, 'warm_MiBps')}")
        t.row("  write to touched memory, MiB/s (4K / THP)",
              f"{r(f4, 'retouch_MiBps')} / {r(fh, 'retouch_MiBps')}")


# Issue 17's per-leaf targets, at 50,000 leaves: seconds per leaf.
PER_LEAF_TARGETS = {"block": 3e-6, "restore": 20e-6}


def _point(sweep: dict, lib: str, n: int) -> dict | None:
    pts = sweep.get(lib, {}).get("points", {})
    return pts.get(n) or pts.get(str(n))


def scaling_rows(t: Table, sc: dict) -> None:
    """Per-leaf rows at 1k/10k/50k leaves, from the scaling sweep's leaf points."""
    lv = sc.get("leaves", {})
    t.section(f"Per-leaf costs: N leaves of {sc['leaf_bytes']} B (the scaling sweep, medians "
              f"of {sc['reps']}; Orbax stops where its next point would take > "
              f"{sc['orbax_cap_s']:.0f} s)")
    for n in (1000, 10000, 50000):
        j, o = _point(lv, "jaxckpt", n), _point(lv, "orbax", n)
        if j is None and o is None:
            continue
        for field, label in (("block", "save() blocks"), ("commit", "save -> committed"),
                             ("restore", "restore with target")):
            def fmt(r: dict | None) -> str:
                if r is None:
                    return "-"
                return f"{_num(r[field] * 1e3)} ({_num(r[field] / n * 1e6)} us/leaf)"
            target, ok = "", None
            if n == 50000 and field in PER_LEAF_TARGETS:
                lim = PER_LEAF_TARGETS[field]
                target = f"<= {lim * 1e6:.0f} us/leaf"
                ok = None if j is None else j[field] / n <= lim
            t.row(f"  {n:,} leaves: {label}, ms", "", fmt(o), fmt(j),
                  ratio(j and j[field], o and o[field]), "", target, _verdict(ok, True))
    png = sc.get("png")
    if png:
        t.section(f"  scaling plot: {png}")


ISSUE17 = (("W1", "restore", "W1 restore"), ("W2", "block", "W2 save() blocks"),
           ("W2", "commit", "W2 save -> commit"), ("W2", "restore", "W2 restore"),
           ("W3", "commit", "W3 save -> commit"))


def summary_rows(t: Table, report: dict, full: bool) -> None:
    """Issue 17's table in one place: each row, its limit, Orbax, target, verdict."""
    t.section("Issue 17's targets (each row is repeated in its section below), ms")
    targets = _targets()
    for w, field, label in ISSUE17:
        res = report["workloads"].get(w)
        if not res or "error" in res:
            continue
        c = res["contenders"]
        text, test, key = targets[(w, field)]
        j, o = med(c["jaxckpt"].get(field)), med(c["orbax"].get(field))
        lim = None if field == "block" else _lim(res, field, key)
        ok = None
        if j is not None:
            try:
                ok = bool(test(j, res))
            except TypeError:
                ok = None
        num = lambda v: "-" if v is None else _num(v * 1e3)  # noqa: E731
        t.row(f"  {label}", num(lim) + (f" {LIMIT_NAMES[key]}" if key and lim else ""),
              num(o), num(j), ratio(j, o), ratio(j, lim), text,
              _verdict(ok, full or "x " in text))
    imp = (report.get("imports") or {}).get("jaxckpt after jax", {})
    ob = (report.get("imports") or {}).get("orbax.checkpoint after jax", {})
    if "median" in imp:
        t.row("  import jaxckpt after jax", "", _num(ob["median"] * 1e3) if "median" in ob else "-",
              _num(imp["median"] * 1e3), ratio(imp["median"], ob.get("median")), "",
              "<= +150 ms", _verdict(imp["median"] <= 0.150, True))
    sc = report.get("scaling") or {}
    for field in PER_LEAF_TARGETS:
        j = _point(sc.get("leaves", {}), "jaxckpt", 50000)
        o = _point(sc.get("leaves", {}), "orbax", 50000)
        if j is None:
            continue
        lim = PER_LEAF_TARGETS[field]
        t.row(f"  50,000 leaves: {'save() blocks' if field == 'block' else 'restore'}, us/leaf",
              "", "-" if o is None else _num(o[field] / 50000 * 1e6),
              _num(j[field] / 50000 * 1e6), ratio(j[field], o and o[field]), "",
              f"<= {lim * 1e6:.0f} us/leaf", _verdict(j[field] / 50000 <= lim, True))


def render(report: dict) -> str:
    """The table and its footnotes, from a report (also one loaded from JSON)."""
    full = report["meta"]["scale"] == 1.0
    t = Table()
    summary_rows(t, report, full)
    for name, res in report["workloads"].items():
        if "error" in res:
            t.section(f"{name}: FAILED: {res['error']}")
        elif name == "W4":
            train_rows(t, res, full)
        elif name == "W5":
            finetune_rows(t, res, full)
        else:
            storage_rows(t, name, res, full)
    if report.get("scaling"):
        scaling_rows(t, report["scaling"])
    elif report.get("scaling_error"):
        t.section(f"Scaling sweep: FAILED: {report['scaling_error']}")
    process_rows(t, report.get("imports"), report.get("growth"), report.get("fsync"),
                 report.get("page_faults"))
    return t.render() + "\n" + footnotes(report)


def footnotes(report: dict) -> str:
    m = report["meta"]
    lines = [
        "",
        f"Times are medians [min-max] of {m['reps']} repetitions after a warm-up (two saves "
        f"for W1-W3) (W3: of "
        f"{max(20, m['reps'])} saves; W4: of {m.get('w4_reps', m['reps'])} loops, its "
        "overhead the median of each loop against the no-checkpointing loop just before "
        f"it); contenders interleaved save by save. Each workload starts "
        f"{m.get('quiet', 0)} s after the previous one's files were deleted and synced.",
        "save -> committed: from the save() call until wait_until_finished() returns "
        "(raw: the synchronous write + fsync of files and directories). Managers keep every "
        "checkpoint (max_to_keep=None), so no deletion is timed.",
        "limit: the fastest buffered raw write (file per leaf, 1 or 8 threads, or one packed "
        "file) or read; j/limit = jaxckpt / limit, also given against each raw row, "
        "O_DIRECT (no page cache) included.",
        "restore with target: ShapeDtypeStructs carrying the leaves' shardings, until the "
        "arrays are ready; raw reads into fresh NumPy buffers, no device transfer. "
        + ("Pages dropped from the page cache before each restore (--cold)."
           if m["cold"] else "Reads may be served from the page cache (the data was just "
           "written); --cold evicts first."),
        f"peak host mem: {m['peak_memory_method']}, minus RSS at the call's start (save; the "
        "state itself is already resident on the CPU backend), minus the state's size "
        "(restore, which must allocate it).",
        f"settle before each timed W1/W2 call: {m['settle']} s. This VM hands memory freed "
        "for ~2 s back to the hypervisor (free page reporting); faulting it in again is "
        "'cold' (see the first-touch rows), so a fresh allocation, or a buffered write's new "
        "page-cache pages, cost far more after an idle pause than right after a free "
        "('warm'). --settle 3 makes every timed call cold, as between real saves minutes "
        "apart; 0 (default) runs them back to back.",
    ]
    fs = report.get("fsync") or {}
    o = fs.get("orbax", {})
    if "files" in o:
        lines.append(
            f"fsync (strace of one small save): Orbax fsyncs {o['files_fsynced']} of the "
            f"{o['files']} files it commits (tensorstore's array and OCDBT files) and not "
            f"{', '.join(os.path.basename(x) for x in o['files_not_fsynced'][:5])}"
            f"{'...' if len(o['files_not_fsynced']) > 5 else ''}; its final rename is "
            f"{'' if o['commit_rename_then_parent_fsync'] else 'not '}followed by an fsync of "
            "the parent. The bulk bytes are fsync'd by both libraries, so commit times "
            "compare fsync against fsync.")
    j = fs.get("jaxckpt", {})
    if "files" in j:
        lines.append(f"jaxckpt fsyncs {j['files_fsynced']} of {j['files']} files, "
                     f"{j['dirs_fsynced']} directories, rename "
                     f"{'synced' if j['commit_rename_then_parent_fsync'] else 'NOT synced'}.")
    lines.append(
        f"Machine: {m['cpus']} CPUs, {m['platform']}, dir on {m['fs']}; load average "
        f"{m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} after; "
        f"{m['seconds']:.0f} s; git {m['git']}; scale {m['scale']}"
        + ("" if m["scale"] == 1.0 else " (absolute-time targets n/a)") + ".")
    v = m["versions"]
    lines.append("Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]))
    return "\n".join(lines)
