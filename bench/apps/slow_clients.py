"""Hostile load for bench/torture.sh: N clients that send their request head one line a second
(never finishing it) and M clients that ask for a large response and read 1 KiB of it a second.
Each reconnects when the server cuts it, so the pressure stays constant for the whole run.

    python3 slow_clients.py HOST PORT SLOW_HEADERS SLOW_READERS PATH
"""
import asyncio
import socket
import sys


async def slow_header(host, port):
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n")
            for i in range(10**6):
                await asyncio.sleep(1)
                writer.write(b"X-Slow-%d: a\r\n" % i)
                await writer.drain()
                if reader.at_eof():
                    break
        except (ConnectionError, OSError):
            pass
        await asyncio.sleep(0.1)


async def slow_reader(host, port, path):
    while True:
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
            writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
            while True:
                if not await reader.read(1024):
                    break
                await asyncio.sleep(1)
        except (ConnectionError, OSError):
            pass
        await asyncio.sleep(0.1)


async def main():
    host, port, headers, readers, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    tasks = [slow_header(host, port) for _ in range(headers)]
    tasks += [slow_reader(host, port, path) for _ in range(readers)]
    await asyncio.gather(*tasks)


asyncio.run(main())
