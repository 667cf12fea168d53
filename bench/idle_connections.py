#!/usr/bin/env python3
"""What a proxy keeps per idle keep-alive connection.

usage: idle_connections.py HOST:PORT COUNT PID [PID...]

Opens COUNT connections to HOST:PORT, one after another; on each sends one small request
(`Host: bench.test`) and reads its whole response, which must be a 2xx, and then leaves the
connection open and idle. With all of them open it waits a second and prints two numbers: the
VmRSS of the PIDs summed (KiB) before the first connection and with all of them held. The
connections close when it exits.
"""
import resource
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: idle_connections.py\r\n\r\n"


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a worker that is gone holds nothing
    return total


def read_response(sock):
    """Reads one response (Content-Length or chunked framing); returns its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if "content-length" in fields:
        done = lambda b: len(b) >= int(fields["content-length"])  # noqa: E731
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        done = lambda b: b.endswith(b"0\r\n\r\n")  # noqa: E731
    else:
        raise ConnectionError("a response without a length on a kept-alive connection")
    while not done(body):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk
    return status


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    host, _, port = sys.argv[1].rpartition(":")
    count = int(sys.argv[2])
    pids = sys.argv[3:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))
    before = rss_kb(pids)
    held = []
    for i in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(REQUEST)
        status = read_response(sock)
        if not 200 <= status < 300:
            sys.exit(f"idle_connections.py: connection {i + 1} answered {status}")
        held.append(sock)
    time.sleep(1)
    print(before, rss_kb(pids))


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        sys.exit(f"idle_connections.py: {e}")
