"""The RPZ zones served to resolvers: AXFR and IXFR over TCP, SOA over UDP and TCP, with TSIG
(dnspython), and DNS NOTIFY to the resolvers on each new serial.

Who may transfer a zone: a request signed with *that zone's* TSIG key (one key per subscriber;
another subscriber's valid key is refused), or an unsigned request from an address in the
subscriber's `axfr_unsigned_from` (for resolvers that cannot sign transfers, such as Unbound
1.17 in Debian 12).  Everything else gets REFUSED; a bad signature gets NOTAUTH.  Only the
zones of configured subscribers exist; any other name is REFUSED too (no recursion, no other
data).

IXFR (RFC 1995) is answered incrementally from the recorded diffs when the client's serial is
in the history, with the whole zone (AXFR form) otherwise; over UDP it gets the SOA only, so
the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig

from egress.sinks.subscriber import Zone
from schemas.sinks import SubscriberSinks
from stixbus.core.sinks import rpz
from stixbus.errors import ConfigError
from stixbus.files import atomic_write

log = logging.getLogger("stixbus.sinks.dns")

RECORDS_PER_MESSAGE = 400  # ~60 bytes a record: well under the 64 KiB of a TCP message
MAX_QUERY_BYTES = 4096


def tsig_secret(config: SubscriberSinks, home: Path) -> bytes:
    """The subscriber's TSIG secret: its `tsig_secret_file`, else <home>/secrets/tsig/<org>.key
    (32 random bytes, base64, created 0600 on first use)."""
    path = config.tsig_secret_file or home / "secrets" / "tsig" / f"{config.org}.key"
    if not path.exists() and config.tsig_secret_file is None:
        atomic_write(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
    try:
        secret = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error) as exc:
        raise ConfigError(
            f"TSIG secret of {config.org} ({path}) cannot be read: {exc}",
            "give a file holding the base64 secret (e.g. `openssl rand -base64 32`)",
        ) from None
    if len(secret) < 16:
        raise ConfigError(
            f"TSIG secret of {config.org} ({path}) is {len(secret)} bytes",
            "use at least 16 random bytes (32 recommended), base64-encoded",
        )
    return secret


@dataclass
class ServedZone:
    config: SubscriberSinks
    key: dns.tsig.Key
    current: Callable[[], Zone | None]


class ZoneServer:
    def __init__(self, zones: list[ServedZone]) -> None:
        self._zones = {dns.name.from_text(z.config.zone): z for z in zones}
        self._keyring = {z.key.name: z.key for z in zones}
        self._by_key = {z.key.name: z for z in zones}
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._cache: dict[tuple[str, int], list[dns.rrset.RRset]] = {}
        self._clients: set[asyncio.Task[None]] = set()

    # --- serving --------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen on TCP and UDP `port` (0: any free one; the TCP port is returned)."""
        server = await asyncio.start_server(self._tcp_client, host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(host, bound)
        )
        return int(bound)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self._udp is not None:
            self._udp.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), 30)
                    (length,) = struct.unpack("!H", head)
                    if length > MAX_QUERY_BYTES:
                        return
                    wire = await asyncio.wait_for(reader.readexactly(length), 10)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                for message in self.answer(wire, peer, tcp=True):
                    writer.write(struct.pack("!H", len(message)) + message)
                    await writer.drain()
        finally:
            writer.close()

    def answer(self, wire: bytes, peer: str, tcp: bool) -> Iterator[bytes]:
        """The wire responses to one query (several for a zone transfer)."""
        try:
            query = dns.message.from_wire(wire, keyring=self._keyring)
        except dns.message.UnknownTSIGKey:
            yield from self._error_header(wire, dns.rcode.NOTAUTH)
            return
        except (dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.PeerError):
            yield from self._error_header(wire, dns.rcode.NOTAUTH)
            return
        except dns.exception.DNSException:
            yield from self._error_header(wire, dns.rcode.FORMERR)
            return
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return
        if query.opcode() != dns.opcode.QUERY:
            yield self._reply(query, dns.rcode.NOTIMP)
            return
        question = query.question[0]
        served = self._zones.get(question.name)
        if served is None or not self._allowed(served, query, peer):
            yield self._reply(query, dns.rcode.REFUSED)
            return
        zone = served.current()
        if zone is None:  # nothing published yet (the sink is still reading the topic)
            yield self._reply(query, dns.rcode.SERVFAIL)
            return
        rdtype = question.rdtype
        if rdtype == dns.rdatatype.SOA or (rdtype == dns.rdatatype.IXFR and not tcp):
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            response.answer.append(self._soa(question.name, zone.serial))
            yield response.to_wire()
            return
        if not tcp or rdtype not in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            yield self._reply(query, dns.rcode.REFUSED)  # the zone holds no other data to ask
            return
        steps = None
        if rdtype == dns.rdatatype.IXFR:
            client = _client_serial(query)
            steps = (
                None if client is None else rpz.ixfr_steps(list(zone.history), client, zone.serial)
            )
        yield from self._transfer(query, served, zone, steps)

    def _allowed(self, served: ServedZone, query: dns.message.Message, peer: str) -> bool:
        if query.had_tsig:
            return query.keyname == served.key.name
        address = ipaddress.ip_address(peer)
        return any(address in network for network in served.config.axfr_unsigned_from)

    def _transfer(
        self,
        query: dns.message.Message,
        served: ServedZone,
        zone: Zone,
        steps: list[rpz.Diff] | None,
    ) -> Iterator[bytes]:
        origin = dns.name.from_text(served.config.zone)
        soa = self._soa(origin, zone.serial)
        if steps == []:  # IXFR from the current serial: up to date
            sequence = [soa]
        elif steps is not None:
            sequence = [soa]
            for step in steps:
                sequence.append(self._soa(origin, step.old))
                sequence += self._rrsets(origin, step.deleted)
                sequence.append(self._soa(origin, step.new))
                sequence += self._rrsets(origin, step.added)
            sequence.append(soa)
        else:
            sequence = [soa, self._ns(origin), *self._zone_rrsets(origin, zone), soa]
        tsig_ctx = None
        for start in range(0, len(sequence), RECORDS_PER_MESSAGE):
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            response.answer = sequence[start : start + RECORDS_PER_MESSAGE]
            if query.had_tsig:
                yield response.to_wire(multi=True, tsig_ctx=tsig_ctx)
                tsig_ctx = response.tsig_ctx
            else:
                yield response.to_wire()

    def _zone_rrsets(self, origin: dns.name.Name, zone: Zone) -> list[dns.rrset.RRset]:
        key = (origin.to_text(), zone.serial)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key[0]}
            self._cache[key] = self._rrsets(origin, zone.records)
        return self._cache[key]

    @staticmethod
    def _rrsets(origin: dns.name.Name, records: frozenset[rpz.Record]) -> list[dns.rrset.RRset]:
        rrsets = []
        for owner, rdata in sorted(records):
            rdtype, _, target = rdata.partition(" ")
            name = dns.name.from_text(owner, origin=origin)
            rrsets.append(dns.rrset.from_text(name, rpz.TTL, "IN", rdtype, target))
        return rrsets

    @staticmethod
    def _soa(origin: dns.name.Name, serial: int) -> dns.rrset.RRset:
        return dns.rrset.from_text(origin, rpz.TTL, "IN", "SOA", rpz.soa_rdata(serial))

    @staticmethod
    def _ns(origin: dns.name.Name) -> dns.rrset.RRset:
        return dns.rrset.from_text(origin, rpz.TTL, "IN", "NS", "localhost.")

    @staticmethod
    def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response.to_wire()

    @staticmethod
    def _error_header(wire: bytes, rcode: dns.rcode.Rcode) -> Iterator[bytes]:
        """A bare header answer for a query that did not parse or verify (no TSIG: we could
        not sign with a key we do not trust)."""
        if len(wire) < 12:
            return
        (query_id, flags) = struct.unpack("!HH", wire[:4])
        if flags & dns.flags.QR:
            return
        response = dns.message.Message(id=query_id)
        response.flags = dns.flags.QR
        response.set_rcode(rcode)
        yield response.to_wire()

    # --- NOTIFY ---------------------------------------------------------------------------
    async def notify(self, config: SubscriberSinks, serial: int) -> None:
        """Tell the subscriber's resolvers the zone has a new serial (RFC 1996), a few tries
        each; a resolver that does not answer still polls on the SOA refresh timer."""
        import dns.asyncquery

        origin = dns.name.from_text(config.zone)
        for target in config.notify:
            host, _, port = target.rpartition(":")
            message = dns.message.make_query(origin, dns.rdatatype.SOA)
            message.flags = dns.flags.AA  # (the opcode lives in the flags: set it after)
            message.set_opcode(dns.opcode.NOTIFY)
            message.answer.append(self._soa(origin, serial))
            for _attempt in range(3):
                try:
                    await dns.asyncquery.udp(
                        message, host or target, port=int(port or 53), timeout=1
                    )
                    break
                except (dns.exception.Timeout, OSError, dns.exception.DNSException):
                    continue
            else:
                log.warning("%s: no answer to NOTIFY from %s", config.org, target)


def _client_serial(query: dns.message.Message) -> int | None:
    for rrset in query.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(rrset[0].serial)
    return None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ZoneServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if len(data) > MAX_QUERY_BYTES or self.transport is None:
            return
        for message in self.server.answer(data, str(addr[0]), tcp=False):
            self.transport.sendto(message, addr)


def make_key(config: SubscriberSinks, secret: bytes) -> dns.tsig.Key:
    return dns.tsig.Key(config.key_name, secret, config.tsig_algorithm)
