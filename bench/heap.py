#!/usr/bin/env python3
"""Reads a dhat-rs heap profile (dhat-heap.json) of a server that held N idle
connections at its heap's peak, and lists what each connection holds there:
allocation sites with blocks and bytes per connection, each block rounded up
to jemalloc's size class (what the release build's allocator really takes).

usage: bench/heap.py dhat-heap.json N [MIN_BYTES_PER_CONNECTION]
"""
import json
import re
import sys


def jemalloc_class(size):
    """jemalloc's size class for a request (x86-64: 8, 16, 32, 48, ..., 128, then 4 per doubling)."""
    if size <= 8:
        return 8
    if size <= 128:
        return (size + 15) // 16 * 16
    k = size.bit_length() - 1
    if size == 1 << k:
        return size
    step = 1 << (k - 2)
    return (size + step - 1) // step * step


# Frames of the allocator and of std's containers, skipped when naming a site.
ALLOCATOR = re.compile(r"\((dhat-[0-9.]+/src|alloc/src|src/raw_vec|src/vec|hashbrown-[0-9.]+/src)/")
# A frame in our code: its file is one of the server's or the protocol crate's.
OURS = re.compile(r"\((server/)?src/((shard|conn|cluster|settings)/[a-z_]+|[a-z_]+)\.rs:")


def label(frames):
    """What was allocated (the type a `new<T>` frame names, else the first frame past the
    allocator) and the first frame of our code on the stack."""
    names = [re.sub(r"^0x[0-9a-f]+: ", "", f) for f in frames]
    what = ""
    for n in names:
        m = re.match(r"new<(alloc::(sync|rc)::(Arc|Rc)Inner<)?([^,>]*(<[^>]*>)?)", n)
        if m and "alloc/src/boxed.rs" in n or m and "alloc/src/sync.rs" in n or m and "alloc/src/rc.rs" in n:
            what = m.group(4)
            break
    if not what:
        what = next((n for n in names if not ALLOCATOR.search(n)), names[0] if names else "?")
    ours = next((n for n in names if OURS.search(n) and "lib.rs" not in n or "server/src/" in n), "")
    short = lambda n: re.sub(r"\s+", " ", n)[:110]
    return short(what), short(ours)


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    min_bytes = float(sys.argv[3]) if len(sys.argv) > 3 else 2
    prof = json.load(open(path))
    ftbl = prof["ftbl"]
    rows = []
    for pp in prof["pps"]:
        blocks, size = pp.get("gbk", 0), pp.get("gb", 0)
        if blocks == 0:
            continue
        per_conn = blocks / n
        if size / n < min_bytes:
            continue
        avg = size / blocks
        rounded = jemalloc_class(int(round(avg))) * blocks / n
        callee, ours = label([ftbl[i] for i in pp["fs"]])
        rows.append((rounded, per_conn, avg, size / n, callee, ours))
    rows.sort(reverse=True)
    total_req = sum(r[3] for r in rows)
    total_cls = sum(r[0] for r in rows)
    print(f"At the heap's peak (t-gmax {prof.get('tg', '?')}), {n} connections; sites holding >= {min_bytes:g} B per connection:")
    print()
    print("| blocks/conn | block size (B) | B/conn asked | B/conn in jemalloc classes | where |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for rounded, per_conn, avg, req, callee, ours in rows:
        where = f"`{callee}`" + (f" ← `{ours}`" if ours else "")
        print(f"| {per_conn:.2f} | {avg:.0f} | {req:.0f} | {rounded:.0f} | {where} |")
    print(f"| | | **{total_req:.0f}** | **{total_cls:.0f}** | total |")


if __name__ == "__main__":
    main()
