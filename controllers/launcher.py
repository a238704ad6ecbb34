"""Runs controller apps on os-ken (default) or upstream Ryu, in a process of its own.

os-ken has no ``osken-manager``; this is the small launcher the design calls for:
parse options, load apps, instantiate, join, and always ``close()``. It avoids
``AppManager.run_apps()``, whose shutdown breaks on native threads.

    python -m controllers.launcher --port 6653 [--framework os_ken|ryu] controllers.sdn_nlb
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def patch_ryu_for_modern_python() -> None:
    """Ryu 4.34 expects eventlet.wsgi.ALREADY_HANDLED, which eventlet >= 0.30 dropped."""
    import eventlet.wsgi

    if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
        eventlet.wsgi.ALREADY_HANDLED = object()


def run(apps: list[str], port: int, host: str, framework: str) -> None:
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

    cfg.CONF([f"--ofp-tcp-listen-port={port}", f"--ofp-listen-host={host}"], project=project)
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
    parser.add_argument("--port", type=int, default=6653, help="OpenFlow listen port")
    parser.add_argument("--host", default="127.0.0.1", help="OpenFlow listen address (loopback)")
    parser.add_argument("--framework", choices=("os_ken", "ryu"), default="os_ken")
    args = parser.parse_args(argv)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        run(args.apps, args.port, args.host, args.framework)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
