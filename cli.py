"""The `zoneslice` command: parses arguments, builds the consoles, calls one library
function per command and maps each ZonesliceError subclass to an exit status.

This is the only module that imports rich.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from zoneslice import errors

COMMIT_DELAY = 0.02


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    BAD_INPUT = 3
    SLICE = 4
    STORE = 5
    TRACE = 6
    LAYOUT = 7
    DEPLOY = 8
    XDP = 9
    TOOL_MISSING = 10
    SERVE = 11
    INTERRUPTED = 130


_STATUS_OF: list[tuple[type[errors.ZonesliceError], ExitStatus]] = [
    (errors.ZoneFileError, ExitStatus.BAD_INPUT),
    (errors.ManifestError, ExitStatus.SLICE),
    (errors.SliceError, ExitStatus.SLICE),
    (errors.StoreError, ExitStatus.STORE),
    (errors.TraceError, ExitStatus.TRACE),
    (errors.LayoutError, ExitStatus.LAYOUT),
    (errors.DeployError, ExitStatus.DEPLOY),
    (errors.XdpError, ExitStatus.XDP),
    (errors.ToolMissing, ExitStatus.TOOL_MISSING),
    (errors.ServeError, ExitStatus.SERVE),
    (errors.KeyFileError, ExitStatus.BAD_INPUT),
]


@dataclass
class Environment:
    """Consoles: results on stdout, progress and errors on stderr (as rich recommends)."""

    console: Console = field(default_factory=lambda: _console())
    err_console: Console = field(default_factory=lambda: _console(stderr=True))


def _console(stderr: bool = False) -> Console:
    """Wide enough for the report tables when the output is a file or a pipe (CI logs)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=150)


def _status_for(exc: errors.ZonesliceError) -> ExitStatus:
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return status
    return ExitStatus.ERROR


# ---- split / slices ------------------------------------------------------------------------------


def _cmd_split(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.split import split_zone

    show = env.err_console.is_terminal and not args.json
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]split[/bold] {task.fields[records]:>12,} records"),
        TextColumn("{task.fields[rate]:>10,.0f} rec/s"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=env.err_console,
        transient=True,
        disable=not show,
    )
    with progress:
        task = progress.add_task("split", total=None, records=0, rate=0.0)

        def on_progress(records: int, done: int, total: int) -> None:
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, completed=done, total=total, records=records, rate=records / elapsed)

        result = split_zone(
            args.zonefile, args.parts, args.out, by=args.by, origin=args.origin, progress=on_progress
        )
    m = result.manifest
    if args.json:
        out = m.to_json()
        out["run"] = {
            "directory": str(result.directory),
            "seconds": round(result.seconds, 3),
            "records_per_second": round(result.records_per_second),
            "peak_rss_mib": round(result.peak_rss_mib, 1),
        }
        env.console.print_json(json.dumps(out))
        return ExitStatus.OK
    _print_slices(env, m, title=f"{m.origin} serial {m.serial} → {result.directory}")
    env.console.print(
        f"{m.records_in:,} records in {result.seconds:.2f} s "
        f"({result.records_per_second:,.0f} rec/s), peak RSS {result.peak_rss_mib:,.0f} MiB"
    )
    return ExitStatus.OK


def _print_slices(env: Environment, m, title: str) -> None:
    t = Table(title=title)
    for col in ("slice", "range", "first … last", "names", "owned", "copies", "file", "MiB", "sha256"):
        t.add_column(col, justify="right" if col in ("slice", "names", "owned", "MiB") else "left")
    for s in m.slices:
        copies = ", ".join(f"{k} {v:,}" for k, v in s.records_copied.items()) or "-"
        t.add_row(
            str(s.index), s.display, f"{s.first or '-'} … {s.last or '-'}", f"{s.names:,}",
            f"{s.records_owned:,}", copies, s.file, f"{s.bytes / 2**20:,.1f}", s.sha256[:12],
        )
    env.console.print(t)


def _cmd_slices(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.manifest import load_manifest

    m = load_manifest(args.manifest)
    if args.name:
        idx = m.plan.slice_for(args.name)
        if args.json:
            env.console.print_json(json.dumps({"name": args.name, "slice": idx}))
        else:
            env.console.print(f"{args.name}: " + (f"slice {idx}" if idx is not None else "outside the zone"))
        return ExitStatus.OK if idx is not None else ExitStatus.ERROR
    if args.json:
        env.console.print_json(json.dumps(m.to_json()))
    else:
        _print_slices(env, m, title=f"{m.origin} serial {m.serial}, {m.parts} slices by {m.by}")
    return ExitStatus.OK


def _cmd_gen_zone(args: argparse.Namespace, env: Environment) -> int:
    from datasets.gen_zone import generate_zone

    stats = generate_zone(args.out, args.delegations, seed=args.seed, origin=args.origin, style=args.style)
    if args.sign:
        from datasets.sign import sign_zone

        unsigned = Path(args.out)
        signed = unsigned.with_name(unsigned.name + ".signed")
        sign_zone(unsigned, signed, args.origin, mode=args.sign)
        signed.replace(unsigned)
    env.console.print_json(json.dumps(asdict(stats)))
    return ExitStatus.OK


def _add_split_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="cut a master file into N alphabetic slices (SQLite) + manifest")
    p.add_argument("zonefile", help="RFC 1035 master file, plain or gzip-compressed")
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--out", help="output directory (default: ZONE.slices beside the file)")
    p.add_argument("--by", choices=["records", "letter"], default="records",
                   help="balance by record count (default) or cut only between first letters")
    p.add_argument("--origin", help="zone origin (default: the owner of the SOA)")
    p.add_argument("--json", action="store_true", help="print the manifest and run figures as JSON")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("slices", help="show the slices of a manifest, or which slice owns a name")
    p.add_argument("manifest", help="manifest.json or the slice directory")
    p.add_argument("--name", help="print the slice that owns this name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_slices)

    p = sub.add_parser("gen-zone", help="write a deterministic .com-like zone")
    p.add_argument("out", help="output file (.gz compresses)")
    p.add_argument("--delegations", "-n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--origin", default="com.")
    p.add_argument("--style", choices=["czds", "rfc1035"], default="czds")
    p.add_argument("--sign", choices=["nsec", "nsec3"])
    p.set_defaults(func=_cmd_gen_zone)


# ---- trace commands: characterize, partition, replay ---------------------------------------------


def _trace_plan(args: argparse.Namespace):
    from zoneslice.trace.partition import load_plan

    return load_plan(args.manifest) if getattr(args, "manifest", None) else None


def _cmd_characterize(args: argparse.Namespace, env) -> int:
    from zoneslice.trace.characterize import characterize

    with env.err_console.status("reading capture…") as status:
        report = characterize(
            args.trace,
            plan=_trace_plan(args),
            progress=lambda n: status.update(f"reading capture… {n:,} messages"),
        )
    if args.plot:
        from zoneslice.trace.plot import rate_plot

        rate_plot(report.rate, args.plot, start=report.rate_start, title=f"Query rate: {args.trace}")
    if args.json:
        env.console.print_json(json.dumps(report.to_dict(series=args.series)))
        return 0
    summary = Table(title=f"Trace characterisation: {args.trace}", show_header=False)
    failed = f"{report.failed:,} ({report.failed_pct:.2f} %)" if report.failed_pct is not None else "n/a (no responses)"
    for k, v in [
        ("Start", report.start or "-"),
        ("Duration", f"{report.duration_s:,.1f} s"),
        ("Requests", f"{report.queries:,}"),
        ("Failed (rcode ≠ NOERROR)", failed),
        ("Average rate", f"{report.avg_rate:,.1f} q/s"),
        ("95th percentile burst", f"{report.burst_p95:,} q/s"),
        ("Maximum burst", f"{report.burst_max:,} q/s"),
        ("Recursion desired", f"{report.rd:,} ({report.rd_pct:.2f} %)"),
        ("Over TCP", f"{report.tcp:,} ({report.tcp_pct:.2f} %)"),
        ("EDNS / DO", f"{report.edns_pct:.2f} % / {report.do_pct:.2f} %"),
        ("Malformed", f"{report.malformed:,}"),
    ]:
        summary.add_row(k, v)
    env.console.print(summary)
    types = Table(title="Query types")
    for col in ("type", "class", "count", "share %", "failure rate %"):
        types.add_column(col, justify="left" if col in ("type", "class") else "right")
    for row in report.qtypes:
        rate = f"{row.failure_rate:.2f}" if row.failure_rate is not None else "-"
        types.add_row(row.qtype, row.qclass, f"{row.count:,}", f"{row.share:.2f}", rate)
    env.console.print(types)
    codes = Table(title="Response codes and opcodes")
    codes.add_column("rcode")
    codes.add_column("responses", justify="right")
    codes.add_column("opcode")
    codes.add_column("queries", justify="right")
    rc, op = list(report.rcodes.items()), list(report.opcodes.items())
    for i in range(max(len(rc), len(op))):
        a = rc[i] if i < len(rc) else ("", "")
        b = op[i] if i < len(op) else ("", "")
        codes.add_row(a[0], f"{a[1]:,}" if a[1] != "" else "", b[0], f"{b[1]:,}" if b[1] != "" else "")
    env.console.print(codes)
    if report.slices is not None:
        sl = Table(title="Queries per slice")
        sl.add_column("slice", justify="right")
        sl.add_column("queries", justify="right")
        for i, n in report.slices.items():
            sl.add_row(str(i), f"{n:,}")
        sl.add_row("outside", f"{report.outside_zone:,}")
        env.console.print(sl)
    return 0


def _cmd_partition(args: argparse.Namespace, env) -> int:
    from zoneslice.trace.partition import partition

    with env.err_console.status("partitioning…") as status:
        result = partition(args.trace, _trace_plan(args), args.out,
                           progress=lambda n: status.update(f"partitioning… {n:,} queries"))
    if args.json:
        env.console.print_json(json.dumps(result.to_dict()))
        return 0
    t = Table(title=f"Per-slice query files in {args.out}")
    t.add_column("slice", justify="right")
    t.add_column("queries", justify="right")
    t.add_column("file")
    for i, path in result.files.items():
        t.add_row(str(i), f"{result.counts[i]:,}", path)
    env.console.print(t)
    for k, v in result.skipped.items():
        env.err_console.print(f"skipped {v:,}: {k}")
    return 0


def _parse_servers(text: str, parts: int) -> dict[int, tuple[str, int]]:
    """"0=127.0.0.1:5300,1=[::1]:5301" or "*=ADDR:PORT" -> {slice: (addr, port)}."""
    out: dict[int, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, hostport = item.partition("=")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"bad server {item!r}: use SLICE=ADDR:PORT")
        addr = (host.strip("[]"), int(port))
        for i in (range(parts) if key == "*" else [int(key)]):
            out[i] = addr
    return out


def _replay_table(report, title: str) -> Table:
    t = Table(title=title)
    for col in ("slice", "server", "sent", "answered", "lost", "qps", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                "rcodes"):
        t.add_column(col, justify="left" if col in ("server", "rcodes") else "right")

    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    rows = [(str(s.slice), s.server, s) for s in report.slices] + [("all", "", report)]
    for name, server, s in rows:
        lat = s.latency_ms
        t.add_row(name, server, f"{s.sent:,}", f"{s.answered:,}", f"{s.lost:,}", f"{s.qps:,.0f}",
                  ms(lat.get("p50")), ms(lat.get("p90")), ms(lat.get("p99")), ms(lat.get("p99.9")),
                  ", ".join(f"{k} {v:,}" for k, v in s.rcodes.items()))
    return t


def _cmd_replay(args: argparse.Namespace, env) -> int:
    from zoneslice.trace import replay as rp

    plan = _trace_plan(args)
    if args.layout:
        from zoneslice.engine.server import parse_listen
        from zoneslice.testbed.inventory import slice_listeners

        servers = {i: parse_listen(addrs[0]) for i, addrs in slice_listeners(args.layout).items()}
    elif args.servers:
        servers = _parse_servers(args.servers, plan.parts)
    else:
        raise argparse.ArgumentTypeError("give --servers SLICE=ADDR:PORT,... or --layout INVENTORY")
    if missing := sorted(set(range(plan.parts)) - set(servers)):
        raise argparse.ArgumentTypeError(f"no server for slice(s) {missing}")
    mode = "timed" if args.timed else "closed-loop"
    common = dict(mode=mode, outstanding=args.outstanding, speed=args.speed, timeout=args.timeout, limit=args.limit)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=env.err_console, transient=True) as bar:
        task = bar.add_task("replaying…")

        def progress(p) -> None:
            bar.update(task, description=f"sent {p.sent:,}  answered {p.answered:,}  lost {p.lost:,}")

        if args.engine == "dnsperf":
            report = rp.replay_dnsperf(args.trace, plan, servers, args.workdir or f"{args.trace}.queries",
                                       outstanding=args.outstanding, timeout=args.timeout)
            cmp = None
        elif args.compare:
            ref = _parse_servers(f"0={args.compare}", 1)[0]
            cmp = rp.replay_compare(args.trace, plan, servers, ref, progress=progress, **common)
            report = cmp.a
        else:
            report = rp.replay(args.trace, plan, servers, progress=progress, **common)
            cmp = None
    if args.plot:
        rp.write_plots(cmp or report, args.plot)
    if args.json:
        env.console.print_json(json.dumps(cmp.to_dict() if cmp else report.to_dict(series=args.series)))
    else:
        env.console.print(_replay_table(report, f"Replay of {args.trace} ({report.engine}, {mode})"))
        if report.timing_error_us:
            te = report.timing_error_us
            env.console.print(f"send-time error: p50 {te['p50']} µs, p99 {te['p99']} µs, max {te['max']} µs")
        if cmp is not None:
            env.console.print(_replay_table(cmp.b, f"Same replay against the reference {args.compare}"))
            env.console.print(f"answers compared {cmp.compared:,}: identical {cmp.identical:,}, "
                              f"different {cmp.different:,}")
            if cmp.examples:
                d = Table(title="Answers that differ (first ones)")
                for col in ("#", "query", "slices", "reference", "differs in"):
                    d.add_column(col)
                for e in cmp.examples:
                    d.add_row(str(e.seq), f"{e.qname} {e.qtype}", e.a, e.b, ", ".join(e.differs_in))
                env.console.print(d)
        for k, v in report.skipped.items():
            env.err_console.print(f"skipped {v:,}: {k}")
    if report.interrupted:
        env.err_console.print("[yellow]interrupted: partial report[/yellow]")
        return 130
    return 1 if cmp is not None and cmp.different else 0


def _add_trace_parsers(sub) -> None:
    p = sub.add_parser("characterize", help="ISC-style characterisation of a capture")
    p.add_argument("trace", help="pcap/pcapng, optionally gzip/xz/zstd-compressed")
    p.add_argument("--manifest", help="also count queries per slice of this manifest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--series", action="store_true", help="include the per-second rate series in --json")
    p.add_argument("--plot", metavar="PNG", help="write the query rate over time")
    p.set_defaults(func=_cmd_characterize)

    p = sub.add_parser("partition", help="write per-slice dnsperf query files")
    p.add_argument("trace")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="directory for slice-<i>.queries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_partition)

    p = sub.add_parser("replay", help="replay a capture against the slice servers")
    p.add_argument("trace")
    p.add_argument("--manifest", required=True)
    p.add_argument("--servers", help="SLICE=ADDR:PORT,... ('*=ADDR:PORT' for all slices)")
    p.add_argument("--layout", metavar="INVENTORY",
                   help="take each slice's server from a `zoneslice layout` inventory instead")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--timed", action="store_true", help="keep the capture's timing (scaled by --speed)")
    m.add_argument("--closed-loop", action="store_true", help="fixed queries in flight per slice (default)")
    p.add_argument("--outstanding", type=int, default=20)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--limit", type=int, help="replay only the first N queries")
    p.add_argument("--engine", choices=["python", "dnsperf"], default="python")
    p.add_argument("--workdir", help="where --engine dnsperf writes its query files")
    p.add_argument("--compare", metavar="ADDR:PORT", help="also replay against this reference server")
    p.add_argument("--json", action="store_true")
    p.add_argument("--series", action="store_true")
    p.add_argument("--plot", metavar="PREFIX", help="write PREFIX-latency.png and PREFIX-<run>-rate.png")
    p.set_defaults(func=_cmd_replay)


# ---- serve / stats / demo ------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, env: Environment) -> int:
    import logging

    from zoneslice.engine.server import parse_listen, serve

    if args.ebpf:
        from zoneslice.xdp.loader import program_text

        env.console.print(program_text(), markup=False, highlight=False)
        return ExitStatus.OK
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.manifest is not None:
        if args.slice is None:
            raise argparse.ArgumentTypeError("--manifest needs --slice")
        source = (args.manifest, args.slice)
    elif args.slice_db:
        source = args.slice_db
    else:
        raise argparse.ArgumentTypeError("give SLICE_DB or --manifest M --slice I")
    listen = [parse_listen(x) for x in args.listen] or None
    role = _xfr_secondary_role(args, source) or _node_role(args, source)
    factory = None
    if args.responder:
        import importlib

        mod, _, attr = args.responder.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
    elif args.tsig_keys:
        factory = _xfr_responder_factory(args)

    def run(hooks: list | None = None) -> None:
        serve(
            source,
            listen,
            args.workers,
            stats_path=args.stats,
            axfr_allow=args.axfr_allow,
            responder_factory=factory,
            responder_options={"cache_size": args.cache_size} if args.cache_size else None,
            role=role,
            commit_hooks=hooks or (),
        )

    if args.xdp is None:
        run()
        return ExitStatus.OK
    # ---- --xdp (helper C): hot set in XDP maps, kept coherent and re-ranked from live counts
    import tempfile

    from zoneslice.engine.server import resolve_source
    from zoneslice.hot.live import counting_factory, read_live_counts
    from zoneslice.hot.serving import hot_path

    port = listen[0][1] if listen else 53
    every = args.hot_refresh if args.hot_refresh is not None else (0 if args.hot_counts else 30)
    with tempfile.TemporaryDirectory(prefix="zoneslice-live-") as tmp:
        live_dir = args.stats or tmp
        live = None
        if every > 0:
            factory = counting_factory(factory, live_dir, half_life=every)  # noqa: F841 - run()

            def live() -> object:
                return read_live_counts(live_dir, max_age=max(10.0, 2 * every))

        with hot_path(
            resolve_source(source), args.xdp, top=args.hot, counts=args.hot_counts,
            mode=args.xdp_mode, port=port, live_counts=live, refresh_every=every or 60.0,
            stats_dir=args.stats,
        ) as hot:
            try:
                run([hot.on_update] if role is not None else None)
            finally:
                env.err_console.print(f"XDP counters on {args.xdp}: {hot.path.counters()}")
    return ExitStatus.OK


def _cmd_hot(args: argparse.Namespace, env: Environment) -> int:
    from collections import Counter

    from zoneslice.hot.hotset import count_queries, write_counts
    from zoneslice.trace.partition import load_plan, routed_queries

    plan = load_plan(args.manifest)
    skipped: Counter[str] = Counter()
    counts = count_queries(
        (q.slice, q.qname, q.qtype) for q in routed_queries(args.trace, plan, skipped)
    )
    path = write_counts(args.out, counts, args.top)
    t = Table(title=f"Hot set counts → {path}")
    t.add_column("slice", justify="right")
    t.add_column("distinct (name, type)", justify="right")
    t.add_column("queries", justify="right")
    for i, c in sorted(counts.items()):
        t.add_row(str(i), f"{len(c):,}", f"{sum(c.values()):,}")
    env.console.print(t)
    return ExitStatus.OK


def _node_role(args: argparse.Namespace, source: object):
    """The writer's role: a primary taking UPDATEs (RFC 2136 + TSIG) when --tsig-keys or
    --allow-update is given, else None (a read-only server)."""
    if not (args.tsig_keys or args.allow_update):
        return None
    from zoneslice.engine.server import parse_listen, resolve_source
    from zoneslice.updates.acl import load_keys
    from zoneslice.updates.primary import primary_role_factory

    ring = load_keys(args.tsig_keys) if args.tsig_keys else {}
    return primary_role_factory(
        resolve_source(source), ring, grants=args.update_grant, allow_unsigned=args.allow_update,
        serial_policy=args.serial_policy, notify=[parse_listen(x) for x in args.notify],
        notify_delay=args.notify_delay, commit_delay=args.commit_delay,
        **_xfr_primary_options(args, source),
    )  # fmt: skip


# ---- replication (issue 4, helper A): secondary role, slice projection, TSIG on transfers ----


def _xfr_secondary_role(args: argparse.Namespace, source: object):
    """``--primary ADDR:PORT``: this server is a secondary (a slice server when its database
    has N parts) following the primary by IXFR/AXFR and forwarding UPDATEs to it."""
    if not args.primary:
        return None
    from zoneslice.engine.server import parse_listen
    from zoneslice.xfr.secondary import secondary_role_factory

    ring = None
    if args.tsig_keys:
        from zoneslice.updates.acl import load_keys

        ring = load_keys(args.tsig_keys)
    return secondary_role_factory(
        parse_listen(args.primary), keyring=ring, keyname=args.primary_key, refresh=args.refresh
    )


def _xfr_primary_options(args: argparse.Namespace, source: object) -> dict:
    """``--slice-plan MANIFEST``: project every commit onto that plan's slices (slice IXFR)."""
    if not args.slice_plan:
        return {}
    import contextlib
    import sqlite3

    from zoneslice.engine.server import resolve_source
    from zoneslice.manifest import load_manifest
    from zoneslice.xfr.projection import Projector

    proj = Projector(load_manifest(args.slice_plan).plan)
    with contextlib.closing(sqlite3.connect(resolve_source(source), isolation_level=None)) as c:
        proj.install(c)
    return {"in_transaction": proj.in_transaction}


def _xfr_responder_factory(args: argparse.Namespace):
    """Transfers (AXFR/IXFR) signed with the keys of ``--tsig-keys`` are verified and signed."""
    from zoneslice.updates.acl import load_keys
    from zoneslice.xfr.transfer import keyed_responder_factory

    return keyed_responder_factory(load_keys(args.tsig_keys))


# ---- end of replication ----------------------------------------------------------------------


def _cmd_updgen(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.engine.server import parse_listen
    from zoneslice.updates.updgen import write_stream

    server = parse_listen(args.server) if args.server else None
    text, counts = write_stream(args.zonefile, args.out, args.count, seed=args.seed,
                                batch=args.batch, server=server, origin=args.origin)
    if args.out is None:
        sys.stdout.write(text)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    env.err_console.print(f"updgen: {args.count} operations ({summary})", highlight=False)
    return ExitStatus.OK


def _cmd_stats(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.engine.stats import read_stats

    stats = read_stats(args.stats)
    env.console.print_json(json.dumps(stats))
    return ExitStatus.OK


def _cmd_demo(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.demo import run_demo

    def stage(msg: str) -> None:
        env.err_console.print(f"[bold cyan]demo:[/bold cyan] {msg}")

    report = run_demo(
        args.dir, delegations=args.delegations, parts=args.parts, queries=args.queries,
        seed=args.seed, workers=args.workers, stage=stage,
        testbed_servers=0 if args.no_testbed else args.testbed_servers,
    )
    m = report.manifest
    _print_slices(env, m, title=f"{m.origin} serial {m.serial}: {m.records_in:,} records in {m.parts} slices")
    env.console.print(
        f"split: {report.split['records_per_second']:,} records/s, "
        f"peak RSS {report.split['peak_rss_mib']:,.0f} MiB"
    )
    c = report.characterization
    env.console.print(
        f"trace: {c.queries:,} queries over {c.duration_s:,.0f} s, average {c.avg_rate:,.1f} q/s, "
        f"95th-percentile burst {c.burst_p95:,} q/s, max burst {c.burst_max:,} q/s, "
        f"RD {c.rd_pct:.1f} %, TCP {c.tcp_pct:.1f} %"
    )
    servers = ", ".join(f"{i}={a}:{p}" for i, (a, p) in sorted(report.servers.items()))
    env.console.print(_replay_table(report.replay, f"Replay through the slice servers ({servers})"))
    lost = report.replay.lost
    if report.testbed is not None:
        tb = report.testbed
        env.console.print(
            f"testbed: {tb['hosts']} hosts ({tb['servers']} servers), Ansible deploy "
            f"{tb['deploy_seconds']} s, {tb['health_checks']} health checks passed"
        )
        env.console.print(_replay_table(tb["replay"], "Replay through the testbed layout"))
        up = tb["updates"]
        ops = ", ".join(f"{k} {v:,}" for k, v in sorted(up["operations"].items()) if v)
        env.console.print(
            f"updates: {up['messages']:,} TSIG-signed UPDATEs by nsupdate during the replay "
            f"({ops}) in {up['seconds']} s; all {tb['servers']} slice servers at serial "
            f"{up['serial']} {up['converged_after']} s after the last one (IXFR)"
        )
        x = tb["xdp"]
        answered = x.get("answered_exact", 0) + x.get("answered_deleg", 0)
        passed = sum(v for k, v in x.items() if k.startswith("pass_") and k != "pass_not_dns")
        env.console.print(
            f"XDP on the slice servers: {answered:,} answered from the driver hook "
            f"({x.get('answered_deleg', 0):,} by delegation entries), {passed:,} DNS queries passed up"
        )
        lost += tb["replay"].lost
    env.console.print(f"everything is in {report.directory}")
    return ExitStatus.OK if lost == 0 else ExitStatus.ERROR


def _add_serve_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve one slice (UDP+TCP, IPv4+IPv6, SO_REUSEPORT workers)")
    p.add_argument("slice_db", nargs="?", help="slice database (or use --manifest and --slice)")
    p.add_argument("--manifest", help="manifest.json or slice directory")
    p.add_argument("--slice", type=int, help="slice index in the manifest")
    p.add_argument("--listen", action="append", default=[], metavar="ADDR:PORT",
                   help="address to serve on (repeatable; default 0.0.0.0:53 and [::]:53)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    p.add_argument("--stats", help="directory for live counters (read with `zoneslice stats`)")
    p.add_argument("--axfr-allow", action="append", default=[], metavar="ADDR[/LEN]",
                   help="client allowed to AXFR (repeatable; default none)")
    p.add_argument("--tsig-keys", metavar="FILE",
                   help="BIND key file (tsig-keygen); its keys may UPDATE the zone (RFC 2136 + TSIG)")
    p.add_argument("--update-grant", action="append", default=[], metavar="KEY=NAME",
                   help="limit KEY to updating NAME and below (repeatable; default the whole zone)")
    p.add_argument("--allow-update", action="append", default=[], metavar="ADDR[/LEN]",
                   help="client allowed to send unsigned UPDATEs (repeatable; default none)")
    p.add_argument("--serial-policy", choices=("increment", "unixtime"), default="increment",
                   help="how an UPDATE bumps the SOA serial (default increment)")
    p.add_argument("--notify", action="append", default=[], metavar="ADDR:PORT",
                   help="secondary to NOTIFY after each committed UPDATE (repeatable)")
    p.add_argument("--notify-delay", type=float, default=0.1, metavar="SECONDS",
                   help="at most one NOTIFY per this interval, with the latest serial (default 0.1)")
    p.add_argument("--commit-delay", type=float, default=COMMIT_DELAY, metavar="SECONDS",
                   help="let a commit of fewer than 8 updates wait this long for more to join it "
                        f"(group commit at a trickle of updates; 0 = never wait; default {COMMIT_DELAY})")
    # replication (issue 4, helper A)
    p.add_argument("--slice-plan", metavar="MANIFEST",
                   help="primary: project each commit onto this N-part manifest's slices (slice IXFR)")
    p.add_argument("--primary", metavar="ADDR:PORT",
                   help="secondary of this primary: IXFR/AXFR on NOTIFY and SOA refresh; UPDATEs forwarded")
    p.add_argument("--primary-key", metavar="NAME",
                   help="TSIG key (from --tsig-keys) signing transfers from the primary")
    p.add_argument("--refresh", type=float, metavar="SECONDS",
                   help="secondary: check the primary this often (default: the SOA refresh/retry)")
    p.add_argument("--cache-size", type=int, help="answer cache entries per worker")
    p.add_argument("--responder", metavar="MODULE:CALLABLE",
                   help="replace the Responder (tests and benchmarks)")
    p.add_argument("--xdp", metavar="IFACE", help="answer the hot set from XDP on this interface")
    p.add_argument("--hot", type=int, default=10000, help="answers to load into the XDP maps")
    p.add_argument("--hot-counts", metavar="FILE", help="`zoneslice hot` output ranking the names")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    p.add_argument("--hot-refresh", type=float, metavar="SECONDS",
                   help="re-rank the hot set from live query counts this often (default: 30 "
                        "without --hot-counts, off with it; 0: off)")
    p.add_argument("--ebpf", action="store_true", help="print the XDP program and exit")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("hot", help="count names per slice in a trace, for the XDP hot set")
    p.add_argument("trace")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", default="hot.json")
    p.add_argument("--top", type=int, help="keep the N most frequent per slice")
    p.set_defaults(func=_cmd_hot)

    p = sub.add_parser("updgen", help="nsupdate script of TLD-like changes valid for a zone (ISC updgen)")
    p.add_argument("zonefile", help="master file of the zone the updates apply to")
    p.add_argument("--count", type=int, required=True, help="operations to write")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="operations per UPDATE message")
    p.add_argument("--out", help="output file (default stdout)")
    p.add_argument("--server", metavar="ADDR:PORT", help="start the script with a server line")
    p.add_argument("--origin", help="zone origin when the file has no $ORIGIN/SOA to tell")
    p.set_defaults(func=_cmd_updgen)

    p = sub.add_parser("stats", help="counters of a running `zoneslice serve --stats DIR`")
    p.add_argument("stats", help="the --stats directory")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("demo", help="generate a zone, split, serve, replay a trace, report")
    p.add_argument("--dir", default="out/demo")
    p.add_argument("--delegations", type=int, default=20000)
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--queries", type=int, default=50000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="worker processes per slice server")
    p.add_argument("--testbed-servers", type=int, default=13,
                   help="also deploy to a local testbed of this many servers (default 13)")
    p.add_argument("--no-testbed", action="store_true", help="skip the testbed stage")
    p.set_defaults(func=_cmd_demo)


# ---- layout / deploy / testbed (issue 7) ---------------------------------------------------------


def _layout_table(layout, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("group", "range", "servers"):
        table.add_column(col)
    for g in layout.slices:
        table.add_row(g.group, escape(g.display), ", ".join(g.servers))
    table.add_row("primary", "whole zone", layout.primary)
    table.add_row("replayers", "", ", ".join(h.name for h in layout.loadgens))
    return table


def _cmd_layout(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.testbed.inventory import (
        inventory_yaml,
        make_inventory,
        write_inventory,
        write_tsig_key,
    )
    from zoneslice.testbed.layout import make_layout

    layout = make_layout(args.servers, args.parts, args.primary, args.loadgen, args.manifest)
    key = args.tsig_key
    if key is None and args.output != "-":
        key = write_tsig_key(Path(args.output).resolve().parent / "tsig.key")
    inv = make_inventory(
        layout, root_base=args.root_base, iface=args.iface, hot_size=args.hot_size,
        tsig_key_file=key, whole_manifest=args.whole_manifest, secondaries=args.secondaries,
        xdp=args.xdp, xdp_mode=args.xdp_mode,
    )  # fmt: skip
    if args.output == "-":
        env.console.print(inventory_yaml(inv), end="", markup=False, highlight=False)
    else:
        path = write_inventory(inv, args.output)
        env.err_console.print(_layout_table(layout, f"{len(layout.hosts)} hosts -> {path}"))
    return ExitStatus.OK


def _deploy_table(hosts: dict) -> Table:
    table = Table(box=None, pad_edge=False)
    for col, justify in (("host", "left"), ("task", "left"), ("ok", "right"),
                         ("changed", "right"), ("failed", "right"), ("", "left")):  # fmt: skip
        table.add_column(col, justify=justify)
    for host, s in sorted(hosts.items()):
        bad = s["failed"] or s["unreachable"]
        state = (
            "[red]unreachable[/red]" if s["unreachable"] else "[red]failed[/red]" if bad
            else "[green]done[/green]" if s.get("done") else ""
        )
        table.add_row(
            host, escape(s["task"][:60]), str(s["ok"]),
            f"[yellow]{s['changed']}[/yellow]" if s["changed"] else "0",
            f"[red]{s['failed']}[/red]" if s["failed"] else "0", state,
        )  # fmt: skip
    return table


def _cmd_deploy(args: argparse.Namespace, env: Environment) -> int:
    from rich.live import Live

    from zoneslice.testbed.deploy import PLAYBOOK_DIR, deploy
    from zoneslice.testbed.inventory import load_inventory, resolve

    hostvars, _groups = resolve(load_inventory(args.inventory))
    hosts = {
        h: {"task": "", "ok": 0, "changed": 0, "failed": 0, "unreachable": 0} for h in hostvars
    }
    extravars = {}
    for item in args.extra_vars:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"-e {item!r}: expected KEY=VALUE")
        extravars[key] = value

    with Live(_deploy_table(hosts), console=env.err_console, refresh_per_second=4) as live:

        def on_event(ev) -> None:
            s = hosts.setdefault(
                ev.host, {"task": "", "ok": 0, "changed": 0, "failed": 0, "unreachable": 0}
            )
            if ev.kind == "task":
                s["task"] = ev.task
            elif ev.kind in ("ok", "changed"):
                s["ok"] += 1
                s["changed"] += ev.kind == "changed"
            elif ev.kind == "failed" and not ev.ignored:
                s["failed"] += 1
            elif ev.kind == "unreachable":
                s["unreachable"] += 1
            live.update(_deploy_table(hosts))

        result = deploy(
            args.inventory, args.playbooks or PLAYBOOK_DIR, limit=args.limit,
            event_handler=on_event, extravars=extravars or None,
        )  # fmt: skip
        for host, st in result.hosts.items():
            hosts.setdefault(host, {"task": ""}).update(
                ok=st.ok, changed=st.changed, failed=st.failed, unreachable=st.unreachable,
                done=result.rc == 0,
            )  # fmt: skip
        live.update(_deploy_table(hosts))

    env.err_console.print(
        f"deploy: {len(result.hosts)} hosts, {result.changed} changed, {result.seconds:.1f} s; "
        f"full log: {result.log_path}",
        highlight=False,
    )
    if not result.ok:
        host, task, message = result.failure or ("", "", result.status)
        raise errors.DeployError(
            f"{host or 'ansible'} failed at {task!r}: {message}" if task else message
        )
    if args.no_health:
        return ExitStatus.OK

    from zoneslice.testbed.health import check_health

    report = check_health(args.inventory)
    table = Table(title="health", title_justify="left")
    for col in ("host", "check", "", "answer"):
        table.add_column(col)
    for c in report.checks:
        if not c.ok or args.verbose:
            mark = "[green]ok[/green]" if c.ok else "[red]FAIL[/red]"
            table.add_row(c.host, c.what, mark, escape(c.detail))
    if table.row_count:
        env.console.print(table)
    bad = len(report.failures)
    env.console.print(
        f"health: {len(report.checks) - bad}/{len(report.checks)} checks passed", highlight=False
    )
    for note in report.skipped:
        env.console.print(f"[dim]skipped: {escape(note)}[/dim]")
    return ExitStatus.OK if report.ok else ExitStatus.DEPLOY


def _cmd_testbed(args: argparse.Namespace, env: Environment) -> int:
    from zoneslice.testbed import local

    def say(msg: str) -> None:
        env.err_console.print(f"[bold cyan]testbed:[/bold cyan] {escape(msg)}")

    if args.action == "up":
        tb = local.testbed_up(
            args.servers, args.parts, args.workdir, primary=args.primary, loadgen=args.loadgen,
            manifest=args.manifest, whole_manifest=args.whole_manifest,
            secondaries=args.secondaries, xdp=args.xdp, progress=say,
        )  # fmt: skip
        env.err_console.print(_layout_table(tb.layout, f"{len(tb.layout.hosts)} hosts up"))
        env.console.print(
            f"testbed up in {tb.seconds:.1f} s; inventory {tb.inventory_path}\n"
            f"next: zoneslice deploy --inventory {tb.inventory_path}",
            highlight=False,
        )
        return ExitStatus.OK
    if args.action == "down":
        r = local.testbed_down(args.workdir, progress=say)
        env.console.print(
            f"testbed down in {r.seconds:.1f} s: {len(r.namespaces)} namespaces, "
            f"{len(r.links)} links, {r.processes} processes, {len(r.files)} files removed",
            highlight=False,
        )
        return ExitStatus.OK
    st = local.testbed_status(args.workdir)
    if args.json:
        env.console.print_json(json.dumps(local.status_dict(st)))
    else:
        table = Table(title=f"testbed {st.workdir}: {st.state}", title_justify="left")
        for col in ("host", "role", "address", "netns", "sshd", "ssh", "dns"):
            table.add_column(col)
        yes = {True: "[green]yes[/green]", False: "[red]no[/red]"}
        for h in st.hosts:
            table.add_row(h.name, h.role, h.address, yes[h.netns], yes[h.sshd],
                          yes[h.ssh_port], yes[h.dns_port])  # fmt: skip
        env.console.print(table)
    return ExitStatus.OK if st.healthy else ExitStatus.ERROR


def _add_layout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--servers", type=int, default=13, help="authoritative servers ns-a ... (≤ 26)")
    p.add_argument("--parts", type=int, default=3, help="slices (must match --manifest)")
    p.add_argument("--primary", help="primary host name; one of the servers, or a separate host "
                   "(default: separate host ns-primary)")
    p.add_argument("--loadgen", type=int, default=1, help="load generators lg-1 ...")
    p.add_argument("--manifest", help="manifest of the split the slice servers serve")
    p.add_argument("--whole-manifest", help="manifest of a --parts 1 split, served by the primary")
    p.add_argument("--secondaries", action="store_true",
                   help="slice servers follow the primary by IXFR (NOTIFY, TSIG) and forward UPDATEs")
    p.add_argument("--xdp", action="store_true", help="attach the XDP hot path on every slice server")


def _add_testbed_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layout", help="write the Ansible inventory of an N-server layout")
    _add_layout_args(p)
    p.add_argument("-o", "--output", default="inventory.yml", help="inventory file ('-': stdout)")
    p.add_argument("--root-base", help="per-host directories below this (default /var/lib/zoneslice)")
    p.add_argument("--iface", default="eth0", help="interface the XDP program will attach to")
    p.add_argument("--hot-size", type=int, default=65536, help="answers in each node's hot set")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    p.add_argument("--tsig-key", help="TSIG key file (default: tsig.key beside the inventory, "
                   "created when missing)")
    p.set_defaults(func=_cmd_layout)

    p = sub.add_parser("deploy", help="provision the layout with Ansible, then check its health")
    p.add_argument("--inventory", "-i", required=True, help="inventory (zoneslice layout / testbed up)")
    p.add_argument("--limit", help="Ansible host pattern to limit the run to")
    p.add_argument("--playbooks", help="playbook directory (default: the one shipped)")
    p.add_argument("-e", "--extra-vars", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-health", action="store_true", help="skip the health check")
    p.add_argument("-v", "--verbose", action="store_true", help="list every health check")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("testbed", help="the layout on this machine: namespaces reached over SSH")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--workdir", default="out/testbed", help="state, keys, inventory, host dirs")
    _add_layout_args(p)
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=_cmd_testbed)


# ---- parser and entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoneslice", description="Authoritative DNS testbed for zones too large for one server."
    )
    parser.add_argument("--version", action="version", version="zoneslice 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _PARSER_GROUPS:
        add(sub)
    return parser


_PARSER_GROUPS: list = [_add_split_parsers, _add_serve_parsers, _add_trace_parsers, _add_testbed_parsers]


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, env))
    except KeyboardInterrupt:
        env.err_console.print("[yellow]interrupted[/yellow]")
        return ExitStatus.INTERRUPTED
    except errors.ZonesliceError as exc:
        env.err_console.print(f"[bold red]zoneslice {args.command}:[/bold red] {escape(str(exc))}", highlight=False)
        return _status_for(exc)
    except argparse.ArgumentTypeError as exc:
        env.err_console.print(f"[bold red]zoneslice {args.command}:[/bold red] {escape(str(exc))}", highlight=False)
        return ExitStatus.USAGE


if __name__ == "__main__":
    sys.exit(main())
