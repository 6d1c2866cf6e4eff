"""Where a traced step spends its device time: a perfetto JSON trace summed by HLO op.

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes
dir/plugins/profile/<run>/perfetto_trace.json.gz (Chrome trace-event JSON). Written by hand
because the tools that summarise traces (TensorBoard's profile plugin, xprof) are not on a bare
accelerator machine, and the format is plain: complete events ("ph": "X") with a duration,
grouped into processes by "M" metadata events. Standard library only.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
from collections import defaultdict
from typing import Any

_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_lines(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its shape, opcode and JAX source op (op_name), from optimised HLO."""
    lines = {}
    for line in hlo_text.splitlines():
        if match := _HLO_LINE.match(line):
            name, rest = match.groups()
            op_name = _OP_NAME.search(rest)
            head = rest.split(", metadata=")[0].split("calls=")[0]
            lines[name] = head[:140] + (f" | {op_name.group(1)[-120:]}" if op_name else "")
    return lines


def _category(op: str, kernel: str) -> str:
    text = f"{op} {kernel}".lower()
    for category, keys in (
        ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "xmma", "cudnn")),
        ("memcpy/memset", ("memcpy", "memset")),
        ("reduction", ("reduce", "reduction")),
        ("transpose/copy", ("transpose", "copy")),
    ):
        if any(k in text for k in keys):
            return category
    return "fusion/other"


def top_ops(trace_path: pathlib.Path, count: int, hlo: dict[str, str]) -> dict[str, Any]:
    """Sums a perfetto JSON trace's op events by HLO op.

    Op events are the complete ("X") events on the device's tracks (process names starting with
    /device:, e.g. GPU kernels and copies), or on the host where there is no device track (CPU
    runs: XLA's thunk executor names each op in args.hlo_op). The busy time is the union of
    those events' intervals; its share of the traced span shows how long the device idled.
    """
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in names.items() if name.startswith("/device:")}
    ops = [
        e
        for e in events
        if e.get("ph") == "X"
        and e.get("dur", 0) > 0
        and (e["pid"] in device_pids if device_pids else "hlo_op" in e.get("args", {}))
    ]
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0, ""])
    categories: dict[str, float] = defaultdict(float)
    for e in ops:
        op = e.get("args", {}).get("hlo_op") or e["name"]
        entry = totals[op]
        entry[0] += e["dur"]
        entry[1] += 1
        entry[2] = entry[2] or e["name"]
        categories[_category(op, e["name"])] += e["dur"]
    intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops)
    busy, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
    total = sum(t[0] for t in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:count]
    return {
        "tracks": sorted(names[p] for p in device_pids) or ["host (no device track)"],
        "device_busy_ms": busy / 1000,
        "device_busy_share_of_span": round(busy / span, 4) if span else None,
        "categories_share": {k: round(v / total, 4) for k, v in sorted(categories.items())},
        "top_ops": [
            {
                "op": op,
                "ms": round(t / 1000, 3),
                "share": round(t / total, 4),
                "calls": calls,
                "kernel": kernel[:100],
                "hlo": hlo.get(op, ""),
            }
            for op, (t, calls, kernel) in ranked
        ],
    }
