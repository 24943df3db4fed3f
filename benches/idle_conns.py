#!/usr/bin/env python3
"""Open N keep-alive connections to 127.0.0.1:PORT, complete one GET on each, then hold
them all idle until killed. Prints 'READY ok=<n> failed=<m>' on stdout once they are open.
Used by benches/e2e.sh to measure memory per idle client connection."""
import asyncio
import sys


async def one(port, conns, sem):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                return False
            conns.append(w)
            return True
        except Exception:  # noqa: BLE001 - any failure counts as failed
            return False


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    conns = []
    sem = asyncio.Semaphore(200)  # open in waves: no SYN backlog drops
    results = await asyncio.gather(*(one(port, conns, sem) for _ in range(n)))
    ok = sum(results)
    print(f"READY ok={ok} failed={n - ok}", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
