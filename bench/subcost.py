#!/usr/bin/env python3
"""Idle memory per broadcast.v2 subscription (run by bench/subcost.sh): N v2
connections, each subscribed to K of 1,000 channels; prints the server RSS growth per connection.
usage: subcost.py HOST PORT PID N K"""
import asyncio, os, sys, base64, json, struct

host, port, pid, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def frame(text):
    data = text.encode()
    mask = os.urandom(4)
    hdr = bytes([0x81])
    if len(data) < 126:
        hdr += bytes([0x80 | len(data)])
    else:
        hdr += bytes([0x80 | 126]) + struct.pack("!H", len(data))
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

async def one(i, ready, conns):
    r, w = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Sec-WebSocket-Protocol: broadcast.v2\r\n\r\n").encode())
    await r.readuntil(b"\r\n\r\n")
    for j in range(k):
        # channel c-{(i+j) % 1000}: 1,000 channels in all, each connection in K of them
        w.write(frame(json.dumps({"type": "subscribe", "channel": f"c-{(i * 7 + j) % 1000}"})))
    await w.drain()
    conns.append((r, w))
    ready.release()

async def drain(r):
    try:
        while await r.read(65536):
            pass
    except Exception:
        pass

async def main():
    base = rss_kib()
    ready = asyncio.Semaphore(0)
    conns = []
    sem = asyncio.Semaphore(200)
    async def limited(i):
        async with sem:
            await one(i, ready, conns)
    tasks = [asyncio.create_task(limited(i)) for i in range(n)]
    await asyncio.gather(*tasks)
    readers = [asyncio.create_task(drain(r)) for r, _ in conns]
    await asyncio.sleep(3)  # let the server process the subscribes and presence settle
    after = rss_kib()
    print(json.dumps({"n": n, "k": k, "rss_base_kib": base, "rss_kib": after,
                      "per_conn_b": (after - base) * 1024 / n}))
    for _, w in conns:
        w.close()

asyncio.run(main())
