#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite report (index.json + per-case JSON files).

usage: autobahn-summary.py INDEX_JSON [--elapsed SECONDS] [--expect N]

Prints the counts by behavior and by closing behavior, the non-OK cases, and
for every failing case the reason taken from its per-case file (what the
suite expected vs what it received, and the close codes).

A case FAILS when
  * its behavior is FAILED, UNIMPLEMENTED (the server implements every
    feature the suite tests, permessage-deflate included), or anything but
    OK / NON-STRICT / INFORMATIONAL (e.g. kosoku's ERROR, Autobahn's NO
    CLOSE), or
  * its closing behavior is FAILED, or a label we do not know.
WRONG CODE, UNCLEAN and FAILED BY CLIENT closes are listed but do not fail
the run (Autobahn itself shows them as non-strict/"almost").

Exit: 0 no failing case; 1 failing cases (or case count != --expect);
2 unreadable report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
PASSING_BEHAVIORS = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSES = ["OK", "INFORMATIONAL", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT", "FAILED"]
PASSING_CLOSES = {"OK", "INFORMATIONAL", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"}
MAX_DETAILS = 25  # failing cases explained in full; the rest are only listed


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def compact(ids: list[str], width: int = 100) -> str:
    """Space-separated ids, wrapped and indented."""
    lines, line = [], ""
    for cid in sorted(ids, key=case_key):
        if line and len(line) + 1 + len(cid) > width:
            lines.append(line)
            line = cid
        else:
            line = f"{line} {cid}" if line else cid
    if line:
        lines.append(line)
    return "\n".join("      " + ln for ln in lines)


def short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(outdir: str, entry: dict) -> list[str]:
    """Reason lines for one failing case, from its per-case report file."""
    path = os.path.join(outdir, entry.get("reportfile") or "")
    try:
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
    except (OSError, ValueError) as err:
        return [f"(no per-case report: {err})"]
    exp_close = case.get("expectedClose") or {}
    out = [
        f"description: {short(case.get('description', ''))}",
        f"result:      {short(case.get('result', ''))}",
        f"close:       {short(case.get('resultClose', ''))}",
        "close codes: expected {} (closedByMe={}, requireClean={}); "
        "received {} {}; sent {}; wasClean={}{}".format(
            exp_close.get("closeCode"),
            exp_close.get("closedByMe"),
            exp_close.get("requireClean"),
            case.get("remoteCloseCode"),
            repr(case.get("remoteCloseReason") or ""),
            case.get("localCloseCode"),
            case.get("wasClean"),
            f" ({case['wasNotCleanReason']})" if case.get("wasNotCleanReason") else "",
        ),
    ]
    expected = case.get("expected") or {}
    if expected:
        out.append(f"expected:    {short(expected)}")
    out.append(f"received:    {short(case.get('received'))}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--elapsed", help="seconds the run took (printed only)")
    ap.add_argument("--expect", type=int, help="exact number of cases expected")
    args = ap.parse_args()

    try:
        with open(args.index, encoding="utf-8") as f:
            index = json.load(f)
        results: dict[str, dict] = {}
        agents = sorted(index)
        for agent in agents:
            results.update(index[agent])
        for cid, r in results.items():
            r["behavior"], r["behaviorClose"]  # noqa: B018 - validate shape
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        print(f"autobahn: unreadable report {args.index}: {err!r}", file=sys.stderr)
        return 2
    outdir = os.path.dirname(os.path.abspath(args.index))

    print()
    print("---- Autobahn|Testsuite results ----")
    took = f" in {args.elapsed}s" if args.elapsed else ""
    print(f"agent: {', '.join(agents) or '?'}; {len(results)} cases{took}")
    print(f"report: {outdir}/index.json (per-case *.json / *.html beside it)")

    beh = Counter(r["behavior"] for r in results.values())
    print("by behavior:")
    for name in BEHAVIORS + sorted(set(beh) - set(BEHAVIORS)):
        mark = "" if name in BEHAVIORS else "   <- unknown behavior: counts as failed"
        print(f"  {name:<17}{beh[name]:>4}{mark}")
    close = Counter(r["behaviorClose"] for r in results.values())
    print("by close behavior:")
    for name in CLOSES + sorted(set(close) - set(CLOSES)):
        if close[name] or name in ("OK", "FAILED"):
            mark = "" if name in CLOSES else "   <- unknown close behavior: counts as failed"
            print(f"  {name:<17}{close[name]:>4}{mark}")

    # Non-failing but noteworthy cases, by label.
    for label, field, values in (
        ("behavior NON-STRICT", "behavior", {"NON-STRICT"}),
        ("behavior INFORMATIONAL", "behavior", {"INFORMATIONAL"}),
        ("close WRONG CODE", "behaviorClose", {"WRONG CODE"}),
        ("close UNCLEAN", "behaviorClose", {"UNCLEAN"}),
        ("close FAILED BY CLIENT", "behaviorClose", {"FAILED BY CLIENT"}),
    ):
        ids = [c for c, r in results.items() if r[field] in values]
        if ids:
            print(f"  {label} ({len(ids)}):")
            print(compact(ids))

    group_ms: Counter[str] = Counter()
    for cid, r in results.items():
        group_ms[cid.split(".")[0]] += r.get("duration") or 0
    groups = sorted(group_ms, key=lambda g: case_key(g))
    print("case time by group: " + ", ".join(f"{g}.* {group_ms[g] / 1000:.1f}s" for g in groups))
    timed = sorted(results.items(), key=lambda kv: -(kv[1].get("duration") or 0))[:5]
    if timed:
        print("slowest cases: " + ", ".join(f"{c} {r.get('duration', 0)}ms" for c, r in timed))

    failed = sorted(
        (
            c
            for c, r in results.items()
            if r["behavior"] not in PASSING_BEHAVIORS
            or r["behaviorClose"] not in PASSING_CLOSES
        ),
        key=case_key,
    )
    rc = 0
    if args.expect is not None and len(results) != args.expect:
        print(f"FAIL: {len(results)} cases in the report, expected {args.expect}")
        rc = 1
    if not results:
        print("FAIL: the report has no cases")
        rc = 1
    if failed:
        rc = 1
        print(f"FAILED cases ({len(failed)}):")
        print(compact(failed))
        for cid in failed[:MAX_DETAILS]:
            r = results[cid]
            print(f"  {cid}: behavior={r['behavior']} close={r['behaviorClose']}")
            for line in explain(outdir, r):
                print(f"      {line}")
        if len(failed) > MAX_DETAILS:
            print(f"  ... {len(failed) - MAX_DETAILS} more failing cases; see {outdir}")
    if rc == 0:
        print(f"PASS: {len(results)} cases, none failed")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as err:  # a crash must not look like "cases failed" (1)
        print(f"autobahn-summary: internal error: {err!r}", file=sys.stderr)
        sys.exit(2)
