# A dev server for preview tests and benchmarks, run inside a sandbox on the `base` template:
#   python3 preview_server.py PORT [BIND]
# /headers echoes the request headers, /cookie sets a cookie with a Domain, /stream sends one
# chunk and the next only once /tmp/release exists, /ws is a WebSocket echo, /big is 1 MB.
import base64, hashlib, os, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG = b"x" * (1 << 20)
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response, sent at once: without these, headers and body leave in two
    # segments and Nagle's algorithm meets delayed ACKs (40 ms a request).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, body, status=200, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/headers":
            text = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items())
            self.reply(text.encode())
        elif self.path == "/cookie":
            self.reply(b"cookie set", headers=[
                ("Set-Cookie", "sid=1; Domain=.preview.localhost; Path=/; HttpOnly"),
                ("Set-Cookie", "caged_preview=forged; Path=/"),
            ])
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"first\n")
            while not os.path.exists("/tmp/release"):
                time.sleep(0.05)
            self.chunk(b"second\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/ws":
            self.websocket()
        elif self.path == "/big":
            self.reply(BIG)
        else:
            self.reply(b"hello from python\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.reply(self.rfile.read(length))

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, masked, length = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if masked else b""
            data = bytearray(self.rfile.read(length))
            if masked:
                for i in range(length):
                    data[i] ^= mask[i % 4]
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            if opcode in (1, 2):
                size = len(data)
                if size < 126:
                    header = bytes([0x80 | opcode, size])
                elif size < 65536:
                    header = bytes([0x80 | opcode, 126]) + struct.pack(">H", size)
                else:
                    header = bytes([0x80 | opcode, 127]) + struct.pack(">Q", size)
                self.wfile.write(header + bytes(data))
                self.wfile.flush()


port = int(sys.argv[1])
bind = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
ThreadingHTTPServer((bind, port), Handler).serve_forever()
