"""A local HTTP server for the download tests: ``Mirror()`` serves ``files`` (name -> bytes) on
127.0.0.1 at a random port, from a thread, under one path per behaviour (``url(mode)`` is the URL
prefix of a mode):

    good       the file
    corrupt    the file with one byte changed in the middle
    truncated  the first half of the file, with a Content-Length that matches it
    drop       the announced length, but the connection is closed halfway through
    reset      the same, ended by a TCP reset
    missing    404
    stall      nothing at all (until the server closes)
    stallbody  the headers and half of the file, then nothing

``requests`` records (mode, name) per request. ``close()`` stops it (the ``mirror`` fixtures do).
"""
import http.server
import socket
import socketserver
import struct
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        mode, _, name = self.path.lstrip("/").partition("/")
        server.requests.append((mode, name))
        body = server.files.get(name)
        if mode == "missing" or body is None:
            self.send_error(404, "Not Found")
            return
        if mode == "stall":
            server.stop.wait(10)
            return
        half = len(body) // 2
        if mode == "corrupt":
            body = body[:half] + bytes([body[half] ^ 0xFF]) + body[half + 1:]
        elif mode == "truncated":
            body = body[:half]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("drop", "reset", "stallbody"):
            self.wfile.write(body[:half])
            self.wfile.flush()
            if mode == "stallbody":
                server.stop.wait(10)
            elif mode == "reset":  # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def server_bind(self):  # HTTPServer's looks the host name up (getfqdn): not needed here
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Mirror:
    def __init__(self):
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.requests, self.httpd.stop = {}, [], threading.Event()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    files = property(lambda self: self.httpd.files)
    requests = property(lambda self: self.httpd.requests)

    def url(self, mode):
        return f"http://127.0.0.1:{self.port}/{mode}/"

    def close(self):
        self.httpd.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
