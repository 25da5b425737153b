"""Floor baseline: the handlers behind the least HTTP a Python process can serve.

    python floor_app.py PORT      (bench/handlers must be on PYTHONPATH)

One thread, the stdlib's ``selectors``, keep-alive connections, no framework, no parsing beyond
finding a request's end. What is left of a call's time here is the interpreter, the handler and
the machine (loopback, scheduler, hypervisor): its c=1 tail is the tail any Python server on
this machine starts from. Only for well-formed requests from the load generator.
"""

import json
import selectors
import socket
import sys

import hello
import primes

HANDLERS = {b"/hello": hello.handler, b"/primes": primes.handler}


def answer(head: bytes, body: bytes) -> bytes:
    handler = HANDLERS.get(head.split(b" ", 2)[1])
    if handler is None:
        status, payload = b"404 Not Found", b'{"error": "no such handler"}'
    else:
        status = b"200 OK"
        payload = json.dumps(handler(json.loads(body) if body else {}, None)).encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            # Blocking sockets: selected as readable, recv does not block; answers are small.
            try:
                if not (data := sock.recv(65536)):
                    raise ConnectionResetError
                buf, answers = pending[sock] + data, []
                while (end := buf.find(b"\r\n\r\n")) >= 0:
                    size = content_length(buf[:end])
                    if len(buf) < end + 4 + size:
                        break
                    answers.append(answer(buf[:end], buf[end + 4:end + 4 + size]))
                    buf = buf[end + 4 + size:]
                pending[sock] = buf
                sock.sendall(b"".join(answers))
            except ConnectionError:  # the client left (a load generator's run ended)
                selector.unregister(sock)
                sock.close()
                del pending[sock]


if __name__ == "__main__":
    serve(int(sys.argv[1]))
