"""`citybroker keys …` and `citybroker trust …`: rotation without downtime, from the command line.

Rotating a party's signing key: `keys generate` a new key, `trust add-key` publishes the next trust
bundle version granting it (its window overlapping the old key's), the nodes and brokers pick the
bundle up (infra.trust_watch), then the new key file replaces the old one and the party signs with
it. `keys check` says which certificates and keys end soon.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, fail
from domain.errors import CitybrokerError
from keys import rotation, timefmt, trust
from keys.ed25519 import PublicKey, Signer
from keys.trust import KeyGrant

keys_app = typer.Typer(help="Signing keys and certificates: make, check.", no_args_is_help=True)
trust_app = typer.Typer(
    help="The federation's trust bundle (for its authority).", no_args_is_help=True
)


@keys_app.command("check")
def keys_check_command(
    config: Annotated[Path, typer.Option(help="The node's or broker's config file (TOML).")],
    warn_days: Annotated[
        int, typer.Option(help="Warn about what ends within this many days.", min=0)
    ] = 30,
) -> None:
    """Show when the TLS and CA certificates and the signing keys (their windows in the trust
    bundle in force) end. Exit status 1 if any is expired, not yet valid, unusable or ends within
    --warn-days; 0 otherwise."""
    from cli import keys_check  # loads the config readers (SQLAlchemy): not on every --help

    styles = {keys_check.Standing.OK: "green", keys_check.Standing.RETIRED: "dim"}
    now = timefmt.now()
    party, rows = keys_check.check(config, now, timedelta(days=warn_days))
    table = Table(title=escape(f"keys and certificates of {party} (warning at {warn_days} days)"))
    for col in ("what", "file or key id", "not after", "days left", "standing", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        left = "" if r.not_after is None else str((r.not_after - now).days)
        style = styles.get(r.standing, "bold red" if r.standing.is_problem else "")
        table.add_row(
            r.what,
            escape(r.name),
            timefmt.fmt(r.not_after) if r.not_after else "",
            left,
            f"[{style}]{r.standing.value}[/]" if style else r.standing.value,
            escape(r.note),
        )
    console.print(table)
    problems = [r for r in rows if r.standing.is_problem]
    if problems:
        for r in problems:
            console.print(escape(f"warning: {r.what} {r.name}: {r.standing.value} {r.note}"))
        raise typer.Exit(1)
    console.print("[green]OK[/]: nothing ends within the threshold")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="New private key file to write (mode 600).")],
) -> None:
    """Write a new Ed25519 signing key and print its key id and public key (for `trust add-key`)."""
    if out.exists():
        raise fail(f"{out} already exists; choose a new file")
    signer = Signer.generate()
    signer.save(out)
    console.print(f"key id     {signer.keyid}", soft_wrap=True)
    console.print(f"public key {signer.public.b64}", soft_wrap=True)


def _public_key(key: Path | None, public_key: str | None) -> PublicKey:
    if (key is None) == (public_key is None):
        raise fail("give the new key as --key FILE (its private key) or --public-key BASE64")
    if key is not None:
        return Signer.load(key).public
    try:
        return PublicKey.from_b64(public_key or "")
    except ValueError as e:
        raise fail(f"--public-key: {e}") from None


def _time(text: str | None, option: str, default: timedelta) -> datetime:
    if text is None:
        return timefmt.now() + default
    try:
        return timefmt.parse(text)
    except ValueError as e:
        raise fail(f"{option}: {e}") from None


@trust_app.command("add-key")
def trust_add_key(
    bundle: Annotated[Path, typer.Option(help="The trust bundle file in force.")],
    authority_key: Annotated[
        Path, typer.Option(help="The federation authority's private key (PEM, mode 600).")
    ],
    party: Annotated[str, typer.Option(help="The party the key is for.")],
    key: Annotated[
        Path | None, typer.Option(help="The new private key (its public half is used).")
    ] = None,
    public_key: Annotated[str | None, typer.Option(help="The new public key, base64.")] = None,
    not_before: Annotated[
        str | None, typer.Option(help="Start of the window (default now).")
    ] = None,
    not_after: Annotated[
        str | None, typer.Option(help="End of the window (default a year from now).")
    ] = None,
    retire_after: Annotated[
        str | None, typer.Option(help="End the party's other keys' windows at this time.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the new version (default: replace --bundle)."),
    ] = None,
) -> None:
    """Sign the next trust bundle version, in which `party` also holds a new key whose window
    overlaps its current key's. The file is replaced by rename, so a watching party never reads
    half of it."""
    authority = Signer.load(authority_key)
    try:
        current = trust.load_bundle(bundle, authority.public)
        grant = KeyGrant(
            _public_key(key, public_key),
            _time(not_before, "--not-before", timedelta(0)),
            _time(not_after, "--not-after", timedelta(days=365)),
        )
        retire = _time(retire_after, "--retire-after", timedelta(0)) if retire_after else None
        nxt = rotation.with_added_key(current, party, grant, timefmt.now(), retire)
    except CitybrokerError as e:
        raise fail(f"{e.message} ({e.reason})") from None
    target = out or bundle
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(trust.sign_bundle(nxt, authority).to_json())
    tmp.chmod(0o644)  # public: every party reads it
    os.replace(tmp, target)
    console.print(
        escape(
            f"trust bundle version {nxt.version} written to {target}: {party} also holds key "
            f"{grant.public.keyid[:16]}… from {timefmt.fmt(grant.not_before)} to "
            f"{timefmt.fmt(grant.not_after)}"
        ),  # fmt: skip
        soft_wrap=True,
    )
