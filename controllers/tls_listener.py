"""The controller's OpenFlow listener: only the switch's account may start a TLS handshake,
few at a time, each within one deadline.

os-ken's own TLS server accepts every connection, starts a native thread for it and runs
the handshake there with a per-read timeout: a local user who opens many connections and
trickles a byte every few seconds holds as many threads and descriptors as they like, and
a full descriptor table keeps a reconnecting switch out. This listener does the accepting
and the handshakes itself and hands os-ken (configured for plain TCP on the same socket)
only connections whose mutual TLS handshake has completed:

* **Whose socket is it?** On loopback both ends of a connection are in this namespace's
  ``/proc/net/tcp``, with the uid that created each socket. A connection whose client
  socket is not the switch's account (Open vSwitch's ovs-vswitchd: root on Debian) is
  closed before a byte of TLS is read.
* **One deadline for the whole handshake** (``HANDSHAKE_S``), enforced by shutting the
  socket down, however slowly the bytes arrive.
* **At most ``MAX_PENDING`` handshakes at once**; a connection beyond that is closed.

Because other accounts are refused before the handshake, they cannot fill those slots.

os-ken's channel (``Datapath``) receives in one native thread and sends in another, on the
same socket. An ``ssl.SSLSocket`` must not be used that way: OpenSSL forbids SSL_read and
SSL_write on one connection at the same time, and CPython releases the GIL around both, so
the two race and the TLS state breaks (the switch sees the channel closed or reset, often
within milliseconds of connecting, when the first flow-mods cross the switch's first
messages). Each handed-over connection is therefore a ``SharedTlsSocket``: every OpenSSL
call on it runs under one lock, never blocking inside it.
"""

from __future__ import annotations

import errno
import queue
import select
import socket
import ssl
import threading
import time

HANDSHAKE_S = 5.0
MAX_PENDING = 8
PROC_NET_TCP = "/proc/net/tcp"


def _hex_endpoint(address: tuple[str, int]) -> str:
    """An IPv4 (address, port) as /proc/net/tcp writes it: the address in host byte order."""
    packed = socket.inet_aton(address[0])
    return f"{int.from_bytes(packed, 'little'):08X}:{address[1]:04X}"


def socket_owner(local: tuple[str, int], remote: tuple[str, int], table: str = PROC_NET_TCP) -> int | None:
    """The uid of the socket whose own end is ``local`` and whose peer is ``remote`` (for an
    accepted loopback connection: ``local`` is the client's address). None if not listed."""
    want_local, want_remote = _hex_endpoint(local), _hex_endpoint(remote)
    try:
        with open(table) as rows:
            next(rows, None)  # the header
            for row in rows:
                fields = row.split()
                if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                    return int(fields[7])
    except OSError:
        return None
    return None


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Server side of the channel's mutual TLS: the switch must present a certificate of ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class TlsListener:
    """What os-ken's StreamServer calls ``accept`` on: connections with their handshake done."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, switch_uid: int,
                 on_refused=lambda reason, addr: None):
        self.sock, self.context, self.switch_uid = sock, context, switch_uid
        self.on_refused = on_refused
        self.ready: queue.Queue = queue.Queue()
        self.slots = threading.BoundedSemaphore(MAX_PENDING)
        threading.Thread(target=self._accept_forever, name="of-accept", daemon=True).start()

    def accept(self):
        return self.ready.get()

    def close(self) -> None:
        self.sock.close()

    def _accept_forever(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return  # the listening socket was closed
            self._admit(conn, addr)

    def _admit(self, conn: socket.socket, addr) -> None:
        owner = socket_owner(addr, self.sock.getsockname())
        if owner != self.switch_uid:
            self._refuse(conn, f"socket of uid {owner}, not the switch's ({self.switch_uid})", addr)
        elif not self.slots.acquire(blocking=False):
            self._refuse(conn, f"{MAX_PENDING} handshakes already under way", addr)
        else:
            threading.Thread(target=self._handshake, args=(conn, addr), name="of-handshake", daemon=True).start()

    def _refuse(self, conn: socket.socket, reason: str, addr) -> None:
        conn.close()
        self.on_refused(reason, addr)

    def _handshake(self, conn: socket.socket, addr) -> None:
        deadline = threading.Timer(HANDSHAKE_S, _shut, args=(conn,))
        deadline.start()
        try:
            conn.settimeout(HANDSHAKE_S)
            wrapped = self.context.wrap_socket(conn, server_side=True)
        except OSError as exc:  # ssl.SSLError included; a shut-down socket ends here too
            conn.close()
            self.on_refused(f"TLS handshake: {exc}", addr)
            return
        finally:
            deadline.cancel()
            self.slots.release()
        self.ready.put((SharedTlsSocket(wrapped), addr))


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SharedTlsSocket:
    """A TLS connection that one thread may read while another writes: the socket is
    non-blocking, each OpenSSL call (read, write, shutdown) runs under one lock, and the
    waits for the kernel (readable, writable) happen outside it. ``settimeout`` bounds
    each ``recv`` and ``sendall`` as on a socket; anything else goes to the SSLSocket."""

    def __init__(self, tls: ssl.SSLSocket):
        tls.setblocking(False)
        self._tls, self._lock, self._timeout = tls, threading.Lock(), None

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, size: int) -> bytes:
        deadline = self._deadline()
        while True:
            data, want = self._attempt(lambda: self._tls.recv(size))
            if not want:
                return data
            self._wait(want, deadline)

    def sendall(self, data) -> None:
        view, deadline = memoryview(data).cast("B"), self._deadline()
        while view:
            sent, want = self._attempt(lambda: self._tls.send(view))
            if want:
                self._wait(want, deadline)
            else:
                view = view[sent:]

    def shutdown(self, how: int) -> None:
        """Shut the TCP connection down and keep the TLS state: os-ken ends its sending this
        way and then reads on until the switch hangs up (SSLSocket.shutdown would drop the
        TLS state, and the reads after it would return raw records)."""
        with self._lock:
            socket.socket.shutdown(self._tls, how)

    def close(self) -> None:
        with self._lock:
            self._tls.close()

    def __getattr__(self, name):
        return getattr(self._tls, name)

    def _attempt(self, call):
        """One OpenSSL call, under the lock: (its result, 0), or (None, the poll event it
        needs first) when the non-blocking socket is not ready."""
        with self._lock:
            try:
                return call(), 0
            except ssl.SSLWantReadError:
                return None, select.POLLIN
            except ssl.SSLWantWriteError:
                return None, select.POLLOUT

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _wait(self, events: int, deadline: float | None) -> None:
        fd = self._tls.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the channel's socket is closed")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        poller = select.poll()
        poller.register(fd, events)
        ready = poller.poll(None if left is None else left * 1000)
        if not ready:
            raise socket.timeout("timed out")
        if ready[0][1] & select.POLLNVAL:
            raise OSError(errno.EBADF, "the channel's socket is closed")
