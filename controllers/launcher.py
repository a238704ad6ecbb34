"""Runs controller apps on os-ken (default) or upstream Ryu, in a process of its own.

os-ken has no ``osken-manager``; this is the small launcher the design calls for:
parse options, load apps, instantiate, join, and always ``close()``. It avoids
``AppManager.run_apps()``, whose shutdown breaks on native threads.

    python -m controllers.launcher --port 6653 [--framework os_ken|ryu] controllers.sdn_nlb
    python -m controllers.launcher --listen-fd 5 --ctl-privkey K --ctl-cert C --ca-certs CA controllers.sdn_nlb

The lab uses the second form (caslab/network/ofchannel.py): the runner binds the listening socket
and the controller inherits it (no moment in which another user could take the port), and
the switches must present a certificate of the run's CA (mutual TLS). The handshakes are
the launcher's own (controllers/tls_listener.py: only the switch's account, few at once,
one deadline each); os-ken, configured for plain TCP, gets connections whose handshake is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import traceback

from controllers.tls_listener import HANDSHAKE_S, TlsListener, tls_context


def patch_ryu_for_modern_python() -> None:
    """Ryu 4.34 expects eventlet.wsgi.ALREADY_HANDLED, which eventlet >= 0.30 dropped."""
    import eventlet.wsgi

    if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
        eventlet.wsgi.ALREADY_HANDLED = object()


class InheritedListener:
    """The listening socket the runner bound, as os-ken's StreamServer uses it (``accept``):
    each accepted connection gets a deadline for its TLS handshake (os-ken's Datapath
    sets its own socket timeout once the handshake is done)."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        if self.sock.type != socket.SOCK_STREAM:
            raise SystemExit(f"--listen-fd {fd}: not a stream socket")

    def accept(self):
        conn, addr = self.sock.accept()
        conn.settimeout(HANDSHAKE_S)
        return conn, addr

    def close(self) -> None:
        self.sock.close()


def serve_on_inherited(hub, fd: int, tls: dict[str, str] | None = None, switch_uid: int = 0) -> int:
    """Make os-ken's OpenFlow server use the inherited socket; returns its port. With ``tls``
    the listener itself completes each switch's mutual TLS handshake first."""
    listener: InheritedListener | TlsListener = InheritedListener(fd)
    if tls:
        context = tls_context(tls["cert"], tls["privkey"], tls["ca"])
        listener = TlsListener(listener.sock, context, switch_uid, on_refused=say_refused)
    hub.listen = lambda *args, **kwargs: listener  # what hub.StreamServer calls to bind
    return listener.sock.getsockname()[1]


def log_channel_lives(project: str) -> None:
    """The framework says why a channel stopped sending (a send timeout, a socket error), or
    that it connected, only at DEBUG: those lines of its controller module, and no other
    module's, go to the controller's log (stderr)."""
    logger = logging.getLogger(f"{project}.controller.controller")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("openflow: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def say_refused(reason: str, addr) -> None:
    print(f"openflow: refused {addr[0]}:{addr[1]}: {reason}", file=sys.stderr, flush=True)


def run(apps: list[str], port: int | None, host: str, framework: str, listen_fd: int | None = None,
        tls: dict[str, str] | None = None, switch_uid: int = 0) -> None:
    os.environ["CASLAB_FRAMEWORK"] = framework
    # The controller's threads (OpenFlow, health, API, challenges) hand the GIL over every
    # 0.5 ms instead of 5: a failover's handler waits less for an unrelated thread.
    sys.setswitchinterval(0.0005)
    if framework == "ryu":
        patch_ryu_for_modern_python()
        from ryu.lib import hub  # type: ignore[import-not-found]

        hub.patch(thread=False)
        from ryu import cfg  # type: ignore[import-not-found]
        from ryu.base.app_manager import AppManager  # type: ignore[import-not-found]
        project = "ryu"
    else:
        from os_ken import cfg
        from os_ken.base.app_manager import AppManager
        from os_ken.lib import hub
        project = "os_ken"

    log_channel_lives(project)
    if listen_fd is not None:
        if framework != "os_ken":
            raise SystemExit("--listen-fd needs os-ken (the lab's framework)")
        port = serve_on_inherited(hub, listen_fd, tls, switch_uid)
    options = [f"--ofp-listen-host={host}"]
    if tls and listen_fd is None:
        options += [f"--ofp-ssl-listen-port={port}", f"--ctl-privkey={tls['privkey']}", f"--ctl-cert={tls['cert']}",
                    f"--ca-certs={tls['ca']}"]
    else:
        options.append(f"--ofp-tcp-listen-port={port}")
    cfg.CONF(options, project=project)
    manager = AppManager.get_instance()
    manager.load_apps(apps + [f"{project}.controller.ofp_handler"])
    contexts = manager.create_contexts()
    services = [s for s in manager.instantiate_apps(**contexts) if s is not None]
    try:
        hub.joinall(services)
    finally:
        manager.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("apps", nargs="+", help="app modules, e.g. controllers.sdn_nlb")
    parser.add_argument("--port", type=int, default=6653, help="OpenFlow listen port (without --listen-fd)")
    parser.add_argument("--listen-fd", type=int, default=None, help="an inherited listening socket to serve on")
    parser.add_argument("--ctl-privkey", help="TLS: the controller's private key")
    parser.add_argument("--ctl-cert", help="TLS: the controller's certificate")
    parser.add_argument("--ca-certs", help="TLS: the CA a switch's certificate must be signed by")
    parser.add_argument("--switch-uid", type=int, default=0,
                        help="with --listen-fd and TLS: the account whose sockets may connect (ovs-vswitchd's)")
    parser.add_argument("--host", default="127.0.0.1", help="OpenFlow listen address (loopback)")
    parser.add_argument("--framework", choices=("os_ken", "ryu"), default="os_ken")
    args = parser.parse_args(argv)
    tls_args = (args.ctl_privkey, args.ctl_cert, args.ca_certs)
    if any(tls_args) and not all(tls_args):
        parser.error("TLS needs all of --ctl-privkey, --ctl-cert and --ca-certs")
    tls = dict(zip(("privkey", "cert", "ca"), tls_args)) if all(tls_args) else None

    def stop(signum, _frame):
        raise SystemExit(0)  # how the lab ends its controller: a clean stop

    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        run(args.apps, args.port, args.host, args.framework, args.listen_fd, tls, args.switch_uid)
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # a clean stop, or an app that refused to start (its config) and says why
        status = exit_status(exc)
    except Exception:  # noqa: BLE001 - an app that crashed: said, and a failure
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # not sys.exit: the frameworks' native threads would hold the process


def exit_status(exc: SystemExit) -> int:
    """What ``sys.exit`` would make of ``exc``: a message goes to stderr, status 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
