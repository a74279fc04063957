"""The ``infrakit`` command (also ``python -m infrakit``).

Errors are one clear line on stderr: exit 2 for usage, 1 for a failed
validation or check (``infrakit audit verify``: 1 for a broken chain, 3 when
the chain could not be checked). No traceback unless ``-v``. Secrets are
masked in everything printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import yaml

from infrakit.errors import ConfigError, InfrastructureError
from infrakit.scrub import scrub_text
from infrakit.settings.loader import TextValue, load_settings
from infrakit.settings.models import InfraSettings, flatten
from infrakit.values import install_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNCHECKED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _profile_args(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        parser.add_argument(
            "profile",
            nargs="?",
            help="profile name or path (default: $INFRAKIT_PROFILE, else 'local')",
        )
    parser.add_argument("--profiles-dir", help="directory of <name>.yaml profiles")
    parser.add_argument(
        "--env-file",
        help="a .env file whose variables count as environment variables; the real "
        "environment wins (default: $INFRAKIT_ENV_FILE)",
    )
    parser.add_argument(
        "--secrets-dir",
        help="a directory of files named like variables (Docker/Kubernetes secrets): "
        "INFRAKIT__DATABASE__URL sets the key, DATABASE_URL answers ${DATABASE_URL} "
        "(default: $INFRAKIT_SECRETS_DIR)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set database.pool_size=3 (repeatable); the value "
        "is read by the key's type, as an INFRAKIT__ variable is (JSON for lists and mappings)",
    )


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set`` pairs, their values left as text for the loader to read by the
    type of the key each sets."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = TextValue(value, where=f"--set {key.strip()}")
    return out


class _UsageError(Exception):
    pass


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _load(args: argparse.Namespace, profile: str | None = None) -> InfraSettings:
    settings = load_settings(
        profile if profile is not None else args.profile,
        profiles_dir=args.profiles_dir,
        overrides=_overrides(args.overrides),
        env_file=args.env_file,
        secrets_dir=args.secrets_dir,
    )
    _log_to_stderr(settings)
    return settings


def _log_to_stderr(settings: InfraSettings) -> None:
    """The kit's own log lines (a migration applied while starting, say) go to
    stderr through the profile's redacting pipeline: stdout is the command's
    answer, which ``--json`` makes a document a program reads."""
    from infrakit.logging import configure_logging_from

    configure_logging_from(settings.logging, stream=sys.stderr)


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def cmd_validate(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(f"ok: profile {settings.profile!r} is valid")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    settings = _load(args)
    data = settings.masked()
    if args.sources:
        sources = settings.sources()
        flat = flatten(data)
        if args.format == "json":
            print(_dump({k: {"value": v, "source": sources[k]} for k, v in flat.items()}, "json"))
        else:
            width = max(map(len, flat))
            for key, value in flat.items():
                print(f"{key:<{width}}  {json.dumps(value)}  # {sources[key]}")
        return EXIT_OK
    print(_dump(data, args.format))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    schema = InfraSettings.model_json_schema()
    schema["properties"]["extends"] = {
        "type": "string",
        "description": "Name or path of a profile to deep-merge over.",
    }
    schema["title"] = "infrakit profile"
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_reference(args: argparse.Namespace) -> int:
    from infrakit.settings.reference import render_reference

    print(render_reference(), end="")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    left = flatten(_load(args, args.a).masked())
    right = flatten(_load(args, args.b).masked())
    changed = 0
    for key in sorted(left.keys() | right.keys()):
        a, b = left.get(key, "<unset>"), right.get(key, "<unset>")
        if a != b:
            changed += 1
            print(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
    if not changed:
        print(f"no differences between {args.a!r} and {args.b!r}")
    return EXIT_OK


def _print_states(report: Any) -> None:
    for c in report.components:
        latency = f"{c.latency_ms:8.1f} ms" if c.status == "up" else " " * 11
        line = f"  {c.component:<10} {c.backend:<11} {c.status:<11} {latency}"
        print(line + (f"  {scrub_text(c.error)}" if c.error else ""))


def cmd_describe(args: argparse.Namespace) -> int:
    """Print the effective settings, then start each component, report it, stop."""
    from infrakit.container import Infra

    settings = _load(args)
    print(f"profile: {settings.profile}")
    print(_dump(settings.masked(), "yaml"))
    report = asyncio.run(Infra(settings).probe(timeout_s=args.timeout))
    print("components:")
    _print_states(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from infrakit.database.migrate import upgrade_sync

    settings = _load(args)
    revision = upgrade_sync(settings)
    shown = getattr(settings.database, "url", settings.database.backend)
    print(f"ok: {shown} is at revision {revision}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: the chain is intact; 1: tampering found; 3: it could not be checked
    (the database did not answer, or the chain is keyed and the key is not given)."""
    from infrakit.audit.chain import Checkpoint, load_checkpoints
    from infrakit.container import Infra

    checkpoints: list[Checkpoint] = []
    for source in args.checkpoints:
        try:
            checkpoints += load_checkpoints(source)
        except ValueError as error:
            raise _UsageError(f"--checkpoint {error}") from None
    settings = _load(args)

    async def run() -> int:
        infra = Infra(settings)
        try:
            # only the audit log and what it is built on (the database)
            async with asyncio.timeout(args.timeout):
                await infra.start("audit")
            result = await infra.audit.verify(checkpoints=checkpoints)
        except (InfrastructureError, OSError, TimeoutError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else str(error)
            print(
                f"infrakit: could not check the audit chain: {scrub_text(reason)}", file=sys.stderr
            )
            return EXIT_UNCHECKED
        finally:
            await infra.aclose()
        if result.ok:
            notes = []
            if result.keyed:
                notes.append(f"{result.keyed} keyed")
            if result.checkpoints:
                plural = "s" if result.checkpoints > 1 else ""
                notes.append(f"{result.checkpoints} checkpoint{plural} matched")
            if result.reason:
                notes.append(result.reason)
            note = f" ({'; '.join(notes)})" if notes else ""
            print(f"ok: {result.checked} audit entries verified{note}")
            return EXIT_OK
        if result.needs_key:
            at = f" at entry {result.first_bad_id}" if result.first_bad_id else ""
            print(
                f"infrakit: could not check the audit chain{at}: {result.reason}", file=sys.stderr
            )
            return EXIT_UNCHECKED
        if result.first_bad_id is None:
            print(f"BROKEN: {result.reason}", file=sys.stderr)
        else:
            print(
                f"BROKEN: audit chain fails at entry {result.first_bad_id} "
                f"(entry {result.checked} in insertion order): {result.reason}",
                file=sys.stderr,
            )
        return EXIT_FAILED

    return asyncio.run(run())


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Sign the chain head now and write it where the profile sends checkpoints."""
    from infrakit.container import Infra

    # the checkpoint event goes through the profile's log pipeline (on stderr)
    settings = _load(args)

    async def run() -> int:
        infra = Infra(settings)
        try:
            async with asyncio.timeout(args.timeout):
                await infra.start("audit")
            checkpoint = await infra.audit.checkpoint()
        except (InfrastructureError, OSError, TimeoutError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else str(error)
            print(f"infrakit: no checkpoint written: {scrub_text(reason)}", file=sys.stderr)
            return EXIT_UNCHECKED
        finally:
            await infra.aclose()
        if checkpoint is None:
            why = (
                "the audit log is empty"
                if settings.audit.signing_key is not None
                else "audit.signing_key is not set (checkpoints are signed with it)"
            )
            print(f"infrakit: no checkpoint written: {why}", file=sys.stderr)
            return EXIT_FAILED
        print(checkpoint.to_json())
        return EXIT_OK

    return asyncio.run(run())


def cmd_check(args: argparse.Namespace) -> int:
    from infrakit.container import Infra

    settings = _load(args)
    report = asyncio.run(Infra(settings).probe(timeout_s=args.timeout))
    if args.json:
        print(json.dumps({"profile": settings.profile, **report.to_dict()}, indent=2))
    else:
        print(f"profile: {settings.profile}")
        _print_states(report)
    if report.degraded:
        # reported, but not a failure: requests do not wait on these
        print(f"infrakit: degraded: {', '.join(report.degraded)}", file=sys.stderr)
    if not report.ok:
        print(f"infrakit: down: {', '.join(report.down)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_otlp_receiver(args: argparse.Namespace) -> int:
    """A local OTLP collector for development: print what arrives until Ctrl-C."""
    import signal
    import threading

    try:
        from infrakit.testing.otlp import OtlpReceiver, ReceivedSpan
    except ImportError as error:  # pragma: no cover - the otlp extra brings both
        raise _UsageError(f"otlp-receiver needs {install_line('otlp')}") from error
    printing = threading.Lock()

    def spans(received: list[ReceivedSpan]) -> None:
        with printing:
            for span in received:
                service = span.resource.get("service.name", "?")
                status = {0: "", 1: " OK", 2: " ERROR"}.get(span.status_code, "")
                attributes = scrub_text(json.dumps(span.attributes, default=str, sort_keys=True))
                print(f"span  {service}  {span.name}{status}  trace={span.trace_id}  {attributes}")
            sys.stdout.flush()

    def metrics(names: list[str]) -> None:
        with printing:
            print(f"metrics  {', '.join(sorted(set(names)))}", flush=True)

    receiver = OtlpReceiver(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        keep=False,
        on_spans=spans,
        on_metrics=metrics,
    )
    try:
        receiver.start()
    except (OSError, RuntimeError) as error:
        print(
            f"infrakit: error: cannot listen for OTLP on {args.host} ({error}); "
            "another collector running? choose ports with --http-port/--grpc-port",
            file=sys.stderr,
        )
        return EXIT_FAILED
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"listening for OTLP: {receiver.http_endpoint} (http/protobuf), "
        f"{receiver.grpc_endpoint} (grpc); Ctrl-C stops",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        receiver.stop()
    return EXIT_OK


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free one), got {value}")
    return value


def _add_otlp_receiver(sub: Any) -> None:
    receiver = sub.add_parser(
        "otlp-receiver",
        help="a local OTLP collector for development: print the spans that arrive",
    )
    receiver.add_argument("--host", default="127.0.0.1", help="address to listen on")
    receiver.add_argument("--http-port", type=_port, default=4318, help="OTLP/HTTP port (4318)")
    receiver.add_argument("--grpc-port", type=_port, default=4317, help="OTLP/gRPC port (4317)")
    receiver.set_defaults(func=cmd_otlp_receiver)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infrakit", description="Configuration-driven infrastructure kit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    config = sub.add_parser("config", help="validate, show, diff profiles; print the schema")
    config_sub = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)

    validate = config_sub.add_parser("validate", help="check a profile; exit 1 on problems")
    _profile_args(validate)
    validate.set_defaults(func=cmd_validate)

    show = config_sub.add_parser("show", help="print the effective configuration, secrets masked")
    _profile_args(show)
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    show.add_argument("--sources", action="store_true", help="say where each value came from")
    show.set_defaults(func=cmd_show)

    schema = config_sub.add_parser("schema", help="JSON Schema of a profile, for editors")
    schema.set_defaults(func=cmd_schema)

    reference = config_sub.add_parser("reference", help="the profile reference, as Markdown")
    reference.set_defaults(func=cmd_reference)

    diff = config_sub.add_parser("diff", help="keys whose effective values differ")
    diff.add_argument("a", help="first profile")
    diff.add_argument("b", help="second profile")
    _profile_args(diff, positional=False)
    diff.set_defaults(func=cmd_diff)

    db = sub.add_parser("db", help="the kit's database tables")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_upgrade = db_sub.add_parser("upgrade", help="apply the kit's migrations (idempotent)")
    _profile_args(db_upgrade)
    db_upgrade.set_defaults(func=cmd_db_upgrade)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain; exit 1 when broken, 3 when it cannot be checked"
    )
    _profile_args(verify)
    verify.add_argument(
        "--timeout", type=_timeout, default=30.0, help="seconds to reach the database (default 30)"
    )
    verify.add_argument(
        "--checkpoint",
        dest="checkpoints",
        action="append",
        default=[],
        metavar="FILE_OR_VALUE",
        help="a checkpoint file (JSON lines, or a JSON log) or one checkpoint's JSON: the chain "
        "must still hold every entry it signed (repeatable; needs audit.signing_key)",
    )
    verify.set_defaults(func=cmd_audit_verify)

    checkpoint = audit_sub.add_parser(
        "checkpoint", help="sign the chain head now, print it and write it to the checkpoint sinks"
    )
    _profile_args(checkpoint)
    checkpoint.add_argument(
        "--timeout", type=_timeout, default=30.0, help="seconds to reach the database (default 30)"
    )
    checkpoint.set_defaults(func=cmd_audit_checkpoint)

    check = sub.add_parser("check", help="health of every component; exit 1 when one is down")
    _profile_args(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--timeout", type=_timeout, default=2.0, help="seconds per check (default 2)"
    )
    check.set_defaults(func=cmd_check)

    describe = sub.add_parser(
        "describe", help="start the infrastructure of a profile, print what was built, stop"
    )
    _profile_args(describe)
    describe.add_argument(
        "--timeout", type=_timeout, default=5.0, help="seconds per component (default 5)"
    )
    describe.set_defaults(func=cmd_describe)

    _add_otlp_receiver(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"infrakit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `infrakit config show | head`: the reader left; that is not an error.
        sys.stdout = None  # no flush of a closed pipe at exit
        return EXIT_OK
    except (InfrastructureError, OSError) as exc:
        if args.verbose:
            raise
        text = exc.render(scrub_text) if isinstance(exc, ConfigError) else scrub_text(str(exc))
        print(f"infrakit: error: {text}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"infrakit: unexpected error: {type(exc).__name__}: {scrub_text(str(exc))}"
            " (run with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
