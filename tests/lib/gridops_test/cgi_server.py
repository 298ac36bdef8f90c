"""A minimal CGI/1.1 HTTP server for one script (the OAR REST API's oarapi.cgi) in tests.

    python3 -m gridops_test.cgi_server --port 6668 --script /usr/lib/cgi-bin/oarapi/oarapi.cgi --prefix /oarapi

Runs in the foreground.  Production sites serve oarapi.cgi with Apache
(suexec as user oar); the wrapper itself switches to user oar, so running it
from here as root gives the same result without an Apache configuration.
Request headers are passed as HTTP_* variables (X_REMOTE_IDENT carries the
user name, as OAR's Apache configuration does).
"""
import argparse
import http.server
import subprocess
import urllib.parse


def make_handler(script, prefix):
    class Handler(http.server.BaseHTTPRequestHandler):
        def _run(self):
            url = urllib.parse.urlsplit(self.path)
            if not url.path.startswith(prefix):
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
                "SERVER_SOFTWARE": "gridops-test-cgi", "SERVER_NAME": "localhost",
                "SERVER_PORT": str(self.server.server_address[1]),
                "REQUEST_METHOD": self.command, "SCRIPT_NAME": prefix,
                "PATH_INFO": url.path[len(prefix):], "QUERY_STRING": url.query,
                "REQUEST_URI": self.path,
                "REMOTE_ADDR": self.client_address[0], "CONTENT_LENGTH": str(len(body)),
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "PATH": "/usr/bin:/bin",
            }
            for key, value in self.headers.items():
                env["HTTP_" + key.upper().replace("-", "_")] = value
            proc = subprocess.run([script], input=body, env=env, capture_output=True, timeout=60, check=False)
            head, _sep, payload = proc.stdout.replace(b"\r\n", b"\n").partition(b"\n\n")
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                key, _sep, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key:
                    headers.append((key, value.strip()))
            if proc.returncode != 0 and not head:
                status, payload = 500, proc.stderr
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _run

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--script", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer((args.bind, args.port), make_handler(args.script, args.prefix))
    server.serve_forever()


if __name__ == "__main__":
    main()
